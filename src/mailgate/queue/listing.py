"""What `mailgate queue list` and `summary` show: read-only, portable SQL, used through
queue/reader.py's QueueReader.

`list_messages` is bounded by its limit and walks an index: with a recipient filter, or a
connector or state filter that matches few recipients (fewer than FEW, counted up to that
on an index), the matching messages are found first (by address: queue/track.py; or their
recipients by state and connector: O(matches)), then in queue-id order (ids sort by arrival);
otherwise messages in queue-id order until the limit is reached (with a filter, an index
seek per message for its recipients: many match, so the walk usually ends soon).
`queue_shape` looks at every open recipient, as qshape must; its memory stays bounded
(counts grouped in the database).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailgate.model import FINAL_STATES, OPEN_STATES, WAITING_STATES
from mailgate.queue import states, track
from mailgate.queue.backend import Connection

AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
"""Upper bounds in minutes of the age buckets of `queue_shape` (as qshape); the last
bucket, `1280m+`, holds everything older."""
BUCKET_NAMES = (*(f"{m}m" for m in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}m+")
_CHUNK = 500
FEW = 20_000
"""A connector or state filter matching fewer recipients than this is listed from its
recipients (collecting them is cheap); matching more, from the messages, stopping at the
limit."""


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    address: str
    connector: str
    state: str
    attempts: int
    last_reply: str | None
    due_at: float
    lease_owner: str | None
    lease_until: float | None


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One row of `mailgate queue list`."""

    queue_id: str
    received_at: float
    sender: str
    size: int
    kind: str
    done_at: float | None
    recipients: tuple[QueuedRecipient, ...]


def list_messages(
    conn: Connection,
    *,
    connector: str | None = None,
    state: str | None = None,
    received_before: float | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    limit: int = 1000,
    after: str | None = None,
) -> list[QueuedMessage]:
    """Messages matching every filter given, oldest queue id first, at most `limit`;
    with `after`, only those whose queue id sorts after it (keyset paging: the next page
    starts after the last id of this one, and costs no more than the first).

    Finished messages (done_at set) are left out unless `state` is delivered or bounced.
    `connector`, `state` and `recipient` select messages with at least one recipient
    matching all three; without `state`, that recipient must be open (not final).
    """
    where: list[str] = []
    params: list[Any] = []
    if state not in FINAL_STATES:
        where.append("m.done_at IS NULL")
    if after is not None:
        where.append("m.id > ?")
        params.append(after)
    if received_before is not None:
        where.append("m.received_at < ?")
        params.append(received_before)
    if sender is not None:
        among, keyed = track.candidates(conn, track.SENDER, sender)
        where.append(f"m.sender = ? AND m.id IN ({among})")
        params += [sender, *keyed]
    if connector is not None or state is not None or recipient is not None:
        terms: list[str] = []
        sub: list[Any] = []
        if state in WAITING_STATES:
            terms.append(f"r.state {states.WAITING}")  # the due index's condition
        if state is not None:
            terms.append("r.state = ?")
            sub.append(state)
        else:
            terms.append(f"r.state {states.OPEN_LISTED}")  # one index range per open state
        if connector is not None:
            terms.append("r.connector = ?")
            sub.append(connector)
        if recipient is not None:
            terms.append("r.address = ?")
            sub.append(recipient)
        condition = " AND ".join(terms)
        if recipient is not None:
            # The messages with that recipient first (queue/track.py), then each one's
            # recipients by message: O(matches), whatever else the filter asks.
            among, keyed = track.candidates(conn, track.RECIPIENT, recipient)
            where.append(f"m.id IN ({among})")
            params += keyed
            where.append(
                f"EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {condition})"
            )
        elif _few(conn, condition, sub):
            # recipients_state finds the matching recipients first, by state and
            # connector: O(matches). An EXISTS per message in queue-id order
            # read the whole queue when few matched: `--state held` behind a million
            # queued messages took 0.6 s for none, `--connector smtp` 3.3 s.
            where.append(f"m.id IN (SELECT r.message_id FROM recipients r WHERE {condition})")
        else:
            # Many match (a connector or state holding much of the queue): walking the
            # messages stops at the limit, where collecting every match first would not
            # (0.3-2 s for a million).
            where.append(
                f"EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {condition})"
            )
        params += sub
    query = "SELECT m.id, m.received_at, m.sender, m.size, m.kind, m.done_at FROM messages m"
    if where:
        query += " WHERE " + " AND ".join(where)
    rows = conn.execute(query + " ORDER BY m.id LIMIT ?", [*params, limit]).fetchall()
    recipients = _recipients_of(conn, [str(row[0]) for row in rows])
    return [
        QueuedMessage(
            queue_id=str(row[0]),
            received_at=float(row[1]),
            sender=str(row[2]),
            size=int(row[3]),
            kind=str(row[4]),
            done_at=None if row[5] is None else float(row[5]),
            recipients=tuple(recipients.get(str(row[0]), ())),
        )
        for row in rows
    ]


def _few(conn: Connection, condition: str, params: list[Any]) -> bool:
    """Whether fewer than FEW recipients match `condition`: counted on an index, and
    never more than FEW of them (a connector with little of a big queue would otherwise
    have every message walked: 3.3 s for none at a million)."""
    row = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM recipients r WHERE {condition} LIMIT ?) AS few",
        [*params, FEW],
    ).fetchone()
    return int(row[0]) < FEW


def _recipients_of(conn: Connection, queue_ids: Sequence[str]) -> dict[str, list[QueuedRecipient]]:
    found: dict[str, list[QueuedRecipient]] = {}
    for start in range(0, len(queue_ids), _CHUNK):
        chunk = queue_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT message_id, address, connector, state, attempts, last_reply, due_at, "
            f"lease_owner, lease_until FROM recipients WHERE message_id IN ({marks}) "
            "ORDER BY message_id, id",
            chunk,
        ).fetchall():
            found.setdefault(str(row[0]), []).append(
                QueuedRecipient(
                    address=str(row[1]),
                    connector=str(row[2]),
                    state=str(row[3]),
                    attempts=int(row[4]),
                    last_reply=row[5],
                    due_at=float(row[6]),
                    lease_owner=row[7],
                    lease_until=None if row[8] is None else float(row[8]),
                )
            )
    return found


@dataclass(slots=True)
class ConnectorShape:
    """Open recipients of one connector: in total, by message age bucket, by state."""

    total: int = 0
    ages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKET_NAMES, 0))
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPEN_STATES, 0))


def queue_shape(conn: Connection, now: float) -> dict[str, ConnectorShape]:
    """Per connector, open recipients by the age of their message (the buckets of
    AGE_BUCKETS, like qshape) and by state. Grouped in the database: constant memory."""
    cases = " ".join(f"WHEN m.received_at >= ? THEN {n}" for n in range(len(AGE_BUCKETS)))
    bounds = [now - minutes * 60 for minutes in AGE_BUCKETS]
    shapes: dict[str, ConnectorShape] = {}
    for connector, state, bucket, count in conn.execute(
        "SELECT connector, state, bucket, COUNT(*) FROM ("
        f" SELECT r.connector, r.state, CASE {cases} ELSE {len(AGE_BUCKETS)} END AS bucket"
        " FROM recipients r JOIN messages m ON m.id = r.message_id"
        f" WHERE r.state {states.OPEN}"
        ") AS t GROUP BY connector, state, bucket",
        bounds,
    ).fetchall():
        shape = shapes.setdefault(str(connector), ConnectorShape())
        shape.total += int(count)
        shape.ages[BUCKET_NAMES[int(bucket)]] += int(count)
        shape.states[str(state)] = shape.states.get(str(state), 0) + int(count)
    return dict(sorted(shapes.items()))
