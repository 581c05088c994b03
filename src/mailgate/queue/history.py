"""A message's life as the queue records it, for `mailgate track` and `mailgate queue`:
read-only, portable SQL.

Pure functions over an open DB-API connection (only `execute(sql, params)` is used,
with `?` placeholders). Every lookup is an index search: messages by id, by
Message-ID header, by sender; recipients by message and by address; attempts by
message; bounces by the message they report on (a bounce's `client` names it).

`list_messages` is bounded by its limit and walks an index: recipients by address,
the due index (queued/deferred) or the lease index (active) when the filters allow,
else messages in queue-id order (ids sort by arrival) until the limit is reached.
`queue_shape` and `check_store` look at every open recipient (or every row), like
qshape and an integrity check must; their memory stays bounded (grouped counts, and
at most `limit` examples per problem).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailgate.model import MessageKind

DSN_CLIENT_PREFIX = "mailgate dsn for "
"""A bounce's `client` column: this prefix and the queue id of the message it reports on
(as written by dsn.generate.BounceGenerator)."""


class ReadCursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class ReadConnection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = (), /) -> ReadCursor: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    started_at: float
    finished_at: float
    disposition: str
    reply: str


@dataclass(frozen=True, slots=True)
class RecipientHistory:
    address: str
    connector: str
    state: str
    attempts: int
    last_reply: str | None
    remote_mta: str | None
    due_at: float
    updated_at: float
    history: tuple[Attempt, ...]
    lease_owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class BounceRef:
    """A bounce queued for a message, and where its delivery stands."""

    queue_id: str
    kind: str
    received_at: float
    recipient: str | None
    state: str | None


@dataclass(frozen=True, slots=True)
class MessageHistory:
    queue_id: str
    received_at: float
    sender: str
    size: int
    client: str
    header_message_id: str | None
    smtputf8: bool
    kind: str
    origin: str | None
    done_at: float | None
    recipients: tuple[RecipientHistory, ...]
    bounces: tuple[BounceRef, ...]

    @property
    def bounce_of(self) -> str | None:
        """The queue id this message is a bounce of, if it is one."""
        if self.kind != MessageKind.NORMAL.value and self.client.startswith(DSN_CLIENT_PREFIX):
            return self.client[len(DSN_CLIENT_PREFIX) :]
        return None


def find(conn: ReadConnection, key: str, limit: int = 20) -> list[str]:
    """Queue ids `key` designates, newest first: a queue id, a Message-ID, or an address.

    A Message-ID is matched with and without its angle brackets; an address as the
    envelope sender or a recipient, as given and in lower case.
    """
    key = key.strip()
    if not key:
        return []
    for candidate in dict.fromkeys((key, key.upper())):  # queue ids are upper-case hex
        row = conn.execute("SELECT id FROM messages WHERE id = ?", (candidate,)).fetchone()
        if row is not None:
            return [str(row[0])]
    bare = key[1:-1] if key.startswith("<") and key.endswith(">") else key
    found: dict[str, float] = {}
    for value in dict.fromkeys((f"<{bare}>", bare)):
        for queue_id, received in conn.execute(
            "SELECT id, received_at FROM messages WHERE header_message_id = ? "
            "ORDER BY received_at DESC LIMIT ?",
            (value, limit),
        ).fetchall():
            found[str(queue_id)] = float(received)
    if not found and "@" in bare:
        for address in dict.fromkeys((bare, bare.lower())):
            for queue_id, received in conn.execute(
                "SELECT id, received_at FROM messages WHERE sender = ? "
                "ORDER BY received_at DESC LIMIT ?",
                (address, limit),
            ).fetchall():
                found[str(queue_id)] = float(received)
            for queue_id, received in conn.execute(
                "SELECT m.id, m.received_at FROM recipients r "
                "JOIN messages m ON m.id = r.message_id WHERE r.address = ? "
                "ORDER BY r.message_id DESC LIMIT ?",
                (address, limit),
            ).fetchall():
                found[str(queue_id)] = float(received)
    newest = sorted(found, key=lambda q: (found[q], q), reverse=True)
    return newest[:limit]


def message_history(conn: ReadConnection, queue_id: str) -> MessageHistory | None:
    """Everything the queue knows of one message, or None if it is not (or no longer) there."""
    row = conn.execute(
        "SELECT id, received_at, sender, size, client, header_message_id, smtputf8, kind, "
        "origin, done_at FROM messages WHERE id = ?",
        (queue_id,),
    ).fetchone()
    if row is None:
        return None
    attempts: dict[int, list[Attempt]] = {}
    for recipient_id, started, finished, disposition, reply in conn.execute(
        "SELECT recipient_id, started_at, finished_at, disposition, reply FROM attempts "
        "WHERE message_id = ? ORDER BY started_at, id",
        (queue_id,),
    ).fetchall():
        attempts.setdefault(int(recipient_id), []).append(
            Attempt(float(started), float(finished), str(disposition), str(reply))
        )
    recipients = tuple(
        RecipientHistory(
            address=str(r[1]),
            connector=str(r[2]),
            state=str(r[3]),
            attempts=int(r[4]),
            last_reply=r[5],
            remote_mta=r[6],
            due_at=float(r[7]),
            updated_at=float(r[8]),
            history=tuple(attempts.get(int(r[0]), ())),
            lease_owner=r[9],
            lease_until=None if r[10] is None else float(r[10]),
        )
        for r in conn.execute(
            "SELECT id, address, connector, state, attempts, last_reply, remote_mta, due_at, "
            "updated_at, lease_owner, lease_until FROM recipients WHERE message_id = ? "
            "ORDER BY id",
            (queue_id,),
        ).fetchall()
    )
    return MessageHistory(
        queue_id=str(row[0]),
        received_at=float(row[1]),
        sender=str(row[2]),
        size=int(row[3]),
        client=str(row[4]),
        header_message_id=row[5],
        smtputf8=bool(row[6]),
        kind=str(row[7]),
        origin=row[8],
        done_at=None if row[9] is None else float(row[9]),
        recipients=recipients,
        bounces=tuple(bounces_of(conn, queue_id)),
    )


def bounces_of(conn: ReadConnection, queue_id: str) -> list[BounceRef]:
    """Bounces queued for `queue_id`, oldest first, with their recipient's state."""
    refs = []
    for bounce_id, kind, received in conn.execute(
        "SELECT id, kind, received_at FROM messages WHERE kind <> 'normal' AND client = ? "
        "ORDER BY received_at",
        (DSN_CLIENT_PREFIX + queue_id,),
    ).fetchall():
        target = recipient_state(conn, str(bounce_id))
        refs.append(
            BounceRef(
                queue_id=str(bounce_id),
                kind=str(kind),
                received_at=float(received),
                recipient=None if target is None else str(target[0]),
                state=None if target is None else str(target[1]),
            )
        )
    return refs


def recipient_state(conn: ReadConnection, queue_id: str) -> tuple[str, str] | None:
    """(address, state) of a message's first recipient: where a bounce's delivery stands."""
    row = conn.execute(
        "SELECT address, state FROM recipients WHERE message_id = ? ORDER BY id LIMIT 1",
        (queue_id,),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


# --- `mailgate queue` --------------------------------------------------------------------------
FINAL_STATES = ("delivered", "bounced")
OPEN_STATES = ("queued", "active", "deferred", "held", "quarantined")
STATES = OPEN_STATES + FINAL_STATES
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
"""Upper bounds in minutes of the age buckets of `queue_shape` (as qshape); the last
bucket, `1280m+`, holds everything older."""
BUCKET_NAMES = (*(f"{m}m" for m in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}m+")
_CHUNK = 500


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


def message_id(conn: ReadConnection, key: str) -> str | None:
    """The queue id `key` names (queue ids are upper-case hex; any case is accepted)."""
    key = key.strip()
    for candidate in dict.fromkeys((key, key.upper())):
        row = conn.execute("SELECT id FROM messages WHERE id = ?", (candidate,)).fetchone()
        if row is not None:
            return str(row[0])
    return None


def stored_body(conn: ReadConnection, queue_id: str) -> bytes | None:
    """The stored body of a message; None once it finished (bodies are dropped then)."""
    row = conn.execute("SELECT data FROM bodies WHERE message_id = ?", (queue_id,)).fetchone()
    return None if row is None else bytes(row[0])


def list_messages(
    conn: ReadConnection,
    *,
    connector: str | None = None,
    state: str | None = None,
    received_before: float | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    limit: int = 1000,
) -> list[QueuedMessage]:
    """Messages matching every filter given, oldest queue id first, at most `limit`.

    Finished messages (done_at set) are left out unless `state` is delivered or bounced.
    `connector`, `state` and `recipient` select messages with at least one recipient
    matching all three; without `state`, that recipient must be open (not final).
    """
    where: list[str] = []
    params: list[Any] = []
    if state not in FINAL_STATES:
        where.append("m.done_at IS NULL")
    if received_before is not None:
        where.append("m.received_at < ?")
        params.append(received_before)
    if sender is not None:
        where.append("m.sender = ?")
        params.append(sender)
    if connector is not None or state is not None or recipient is not None:
        terms: list[str] = []
        sub: list[Any] = []
        if state in ("queued", "deferred"):
            terms.append("r.state IN ('queued', 'deferred')")  # the due index's condition
        if state is not None:
            terms.append("r.state = ?")
            sub.append(state)
        else:
            terms.append("r.state NOT IN ('delivered', 'bounced')")
        if connector is not None:
            terms.append("r.connector = ?")
            sub.append(connector)
        if recipient is not None:
            terms.append("r.address = ?")
            sub.append(recipient)
        condition = " AND ".join(terms)
        if recipient is not None or state in ("queued", "deferred", "active"):
            # An index finds the recipients (by address, the due index, the lease index).
            where.append(f"m.id IN (SELECT r.message_id FROM recipients r WHERE {condition})")
        else:
            where.append(
                f"EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {condition})"
            )
        params += sub
    sql = "SELECT m.id, m.received_at, m.sender, m.size, m.kind, m.done_at FROM messages m"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY m.id LIMIT ?", [*params, limit]).fetchall()
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


def _recipients_of(
    conn: ReadConnection, queue_ids: Sequence[str]
) -> dict[str, list[QueuedRecipient]]:
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


def queue_shape(conn: ReadConnection, now: float) -> dict[str, ConnectorShape]:
    """Per connector, open recipients by the age of their message (the buckets of
    AGE_BUCKETS, like qshape) and by state. Grouped in the database: constant memory."""
    cases = " ".join(f"WHEN m.received_at >= ? THEN {n}" for n in range(len(AGE_BUCKETS)))
    bounds = [now - minutes * 60 for minutes in AGE_BUCKETS]
    shapes: dict[str, ConnectorShape] = {}
    for connector, state, bucket, count in conn.execute(
        "SELECT connector, state, bucket, COUNT(*) FROM ("
        f" SELECT r.connector, r.state, CASE {cases} ELSE {len(AGE_BUCKETS)} END AS bucket"
        " FROM recipients r JOIN messages m ON m.id = r.message_id"
        " WHERE r.state NOT IN ('delivered', 'bounced')"
        ") AS t GROUP BY connector, state, bucket",
        bounds,
    ).fetchall():
        shape = shapes.setdefault(str(connector), ConnectorShape())
        shape.total += int(count)
        shape.ages[BUCKET_NAMES[int(bucket)]] += int(count)
        shape.states[str(state)] = shape.states.get(str(state), 0) + int(count)
    return dict(sorted(shapes.items()))


@dataclass(frozen=True, slots=True)
class Problem:
    """One kind of damage `check_store` found: how much, and the first few examples."""

    kind: str
    description: str
    count: int
    examples: tuple[str, ...]


def integrity_check(conn: ReadConnection, limit: int = 100) -> list[str]:
    """SQLite's `PRAGMA quick_check`: an empty list when the file is sound (SQLite only)."""
    rows = conn.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
    found = [str(row[0]) for row in rows]
    return [] if found == ["ok"] else found


def check_store(
    conn: ReadConnection, now: float, *, lease_grace: float = 60.0, limit: int = 20
) -> list[Problem]:
    """Rows that do not fit together: recipients, attempts and bodies whose message is
    gone, messages with open recipients but no body, and leases held past their expiry
    by more than `lease_grace` (a running service releases them within a second), or
    with no expiry at all. Empty when the store is consistent."""
    checks: list[tuple[str, str, str, str]] = [
        (
            "orphan-recipients",
            "recipients whose message is gone",
            "FROM recipients r WHERE NOT EXISTS (SELECT 1 FROM messages m "
            "WHERE m.id = r.message_id)",
            "r.message_id || ' <' || r.address || '>'",
        ),
        (
            "orphan-attempts",
            "attempts whose recipient is gone",
            "FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM recipients r "
            "WHERE r.id = a.recipient_id)",
            "a.message_id || ' attempt ' || a.id",
        ),
        (
            "missing-body",
            "messages with open recipients but no body",
            "FROM messages m WHERE NOT EXISTS (SELECT 1 FROM bodies b WHERE b.message_id = m.id) "
            "AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id "
            "AND r.state NOT IN ('delivered', 'bounced'))",
            "m.id",
        ),
        (
            "orphan-bodies",
            "bodies whose message is gone",
            "FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = b.message_id)",
            "b.message_id",
        ),
        (
            "expired-leases",
            "recipients leased past their lease's expiry",
            "FROM recipients r WHERE r.state = 'active' "
            "AND (r.lease_until IS NULL OR r.lease_until < ?)",
            "r.message_id || ' <' || r.address || '> leased to ' || COALESCE(r.lease_owner, '?')",
        ),
    ]
    problems = []
    for kind, description, source, label in checks:
        params: list[Any] = [now - lease_grace] if "?" in source else []
        count = int(conn.execute(f"SELECT COUNT(*) {source}", params).fetchone()[0])
        if not count:
            continue
        examples = tuple(
            str(row[0])
            for row in conn.execute(f"SELECT {label} {source} LIMIT ?", [*params, limit]).fetchall()
        )
        problems.append(Problem(kind, description, count, examples))
    return problems
