"""Moving one node's SQLite queue into the PostgreSQL store (`mailgate db migrate-from-sqlite`).

Everything the file holds is copied: messages (open ones and the finished ones kept for
tracking), bodies, recipients in their states, attempts, in one PostgreSQL transaction
(COPY, chunk by chunk: memory stays bounded), so a failure copies nothing. Recipient
and attempt ids are drawn from the target's own sequences (it may hold other nodes'
mail already), and each attempt keeps its recipient. Leases left by the stopped service
are given back (queued, due now, flagged released, as a start after a clean stop does).
Refused, copying nothing, when a message id is already in the target (a second run) or
the file was moved before. After the COMMIT the file is marked moved (meta `moved_to`),
so no service starts on it again to deliver its mail a second time. Rows whose message
is gone (orphans, see `mailgate queue check`) are left behind and counted. The caller
holds the source's locks: no service runs on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailgate.errors import MailgateError
from mailgate.queue.pool import PgConnection
from mailgate.queue.postgres import PostgresBackend, translate_errors
from mailgate.queue.sqlite import SqliteBackend, SqliteConnection

CHUNK = 500  # messages per round: their rows are read, and copied, together

MESSAGE_COLUMNS = (
    "id, received_at, sender, size, client, header_message_id, smtputf8, kind, origin, "
    "done_at, delay_warned"
)
RECIPIENT_COLUMNS = (
    "message_id, address, connector, state, due_at, lease_owner, lease_until, released, "
    "attempts, internal_failures, last_reply, remote_mta, updated_at"
)
ATTEMPT_COLUMNS = "message_id, started_at, finished_at, disposition, reply"


class MoveRefused(MailgateError):
    """Nothing was moved, for the reason given."""


@dataclass(frozen=True, slots=True)
class Moved:
    """What was copied, and what was left behind."""

    messages: int = 0
    open_messages: int = 0
    bodies: int = 0
    recipients: int = 0
    attempts: int = 0
    leases_given_back: int = 0
    left_behind: int = 0  # orphan rows (no message), see `mailgate queue check`


def move(source: SqliteBackend, target: PostgresBackend, now: float | None = None) -> Moved:
    """Copy the queue of `source` into `target` and mark `source` moved; see the module."""
    now = time.time() if now is None else now
    target.initialize()  # at this mailgate's schema, or a message saying what to run
    source.upgrade()  # as a start would (refuses a file moved before)
    src = source.connect()
    try:
        dst = target.take()
        try:
            with translate_errors("move", target.where), dst.transaction():
                moved = _copy(src, dst, now)
        finally:
            target.give(dst)
        src.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('moved_to', ?)",
            (f"{target.where} on {time.strftime('%Y-%m-%d %H:%M:%S %z')}",),
        )
    finally:
        src.close()
    return moved


def _copy(src: SqliteConnection, dst: PgConnection, now: float) -> Moved:
    totals = {
        table: int(src.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        for table in ("bodies", "recipients", "attempts")
    }
    counts = dict.fromkeys(("messages", "open", "bodies", "recipients", "attempts", "leases"), 0)
    after = ""
    while True:
        messages = src.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (after, CHUNK),
        ).fetchall()
        if not messages:
            break
        after = str(messages[-1][0])
        ids = [str(row[0]) for row in messages]
        _refuse_known(dst, ids)
        _copy_chunk(src, dst, messages, ids, now, counts)
    left = sum(totals.values()) - counts["bodies"] - counts["recipients"] - counts["attempts"]
    return Moved(
        counts["messages"],
        counts["open"],
        counts["bodies"],
        counts["recipients"],
        counts["attempts"],
        counts["leases"],
        left,
    )


def _refuse_known(dst: PgConnection, ids: list[str]) -> None:
    known = [
        str(row[0])
        for row in dst.execute(
            "SELECT id FROM messages WHERE id = ANY(%s) ORDER BY id LIMIT 3", (ids,)
        ).fetchall()
    ]
    if known:
        raise MoveRefused(
            f"the target already holds message {', '.join(known)} (from an earlier run, or "
            "another node's): nothing was moved"
        )


def _copy_chunk(
    src: SqliteConnection,
    dst: PgConnection,
    messages: list[Any],
    ids: list[str],
    now: float,
    counts: dict[str, int],
) -> None:
    marks = ",".join("?" * len(ids))
    recipients = src.execute(
        f"SELECT id, {RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN ({marks}) ORDER BY id",
        ids,
    ).fetchall()
    new_ids = dict(zip((row[0] for row in recipients), _ids(dst, len(recipients)), strict=True))
    attempts = [
        row
        for row in src.execute(
            f"SELECT id, recipient_id, {ATTEMPT_COLUMNS} FROM attempts "
            f"WHERE message_id IN ({marks}) ORDER BY id",
            ids,
        ).fetchall()
        if row[1] in new_ids  # an attempt whose recipient is gone stays behind
    ]
    bodies = src.execute(
        f"SELECT message_id, data FROM bodies WHERE message_id IN ({marks})", ids
    ).fetchall()
    cur = dst.cursor()
    with cur.copy(f"COPY messages ({MESSAGE_COLUMNS}) FROM STDIN") as copy:
        for row in messages:
            copy.write_row(row)
    with cur.copy("COPY bodies (message_id, data) FROM STDIN") as copy:
        for row in bodies:
            copy.write_row((row[0], bytes(row[1])))
    with cur.copy(f"COPY recipients (id, {RECIPIENT_COLUMNS}) FROM STDIN") as copy:
        for row in recipients:
            copy.write_row((new_ids[row[0]], *_given_back(row[1:], now, counts)))
    with cur.copy(f"COPY attempts (recipient_id, {ATTEMPT_COLUMNS}) FROM STDIN") as copy:
        for row in attempts:
            copy.write_row((new_ids[row[1]], *row[2:]))
    counts["messages"] += len(messages)
    counts["open"] += sum(1 for row in messages if row[9] is None)
    counts["bodies"] += len(bodies)
    counts["recipients"] += len(recipients)
    counts["attempts"] += len(attempts)


def _ids(dst: PgConnection, count: int) -> list[int]:
    """`count` recipient ids from the target's sequence, ascending: the copied rows keep
    their order, and no other node can be handed the same."""
    if not count:
        return []
    rows = dst.execute(
        "SELECT nextval(pg_get_serial_sequence('recipients', 'id')) FROM generate_series(1, %s)",
        (count,),
    ).fetchall()
    return sorted(int(row[0]) for row in rows)


def _given_back(row: Sequence[Any], now: float, counts: dict[str, int]) -> tuple[Any, ...]:
    """A recipient's columns (RECIPIENT_COLUMNS); a leased one given back to the queue."""
    values = list(row)
    if values[3] == "active":
        values[3:8] = ["queued", now, None, None, 1]  # state, due_at, lease_owner/_until, released
        counts["leases"] += 1
    return tuple(values)
