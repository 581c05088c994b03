"""Expiry of recipients that no attempt ends: never claimed, or claimed and released.

Recording an outcome expires a recipient past [queue] max_lifetime, and so does an
attempt that ends without one (leases.py); a recipient nobody claims (its connector
paused) would still wait forever (Q237182). The scheduler runs `expire_waiting`
every tick: it walks the open messages received before the cut-off, oldest first,
on an index of open messages, bounces their queued and deferred recipients (554
5.4.7) and finishes each message, so its report is queued in the same transaction.
Held and quarantined recipients wait for the administrator and do not expire. A
cursor carries each walk on past messages that cannot expire now (held, quarantined,
being delivered), so a pile of them never blocks the rest; a walk is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.model import RecipientState
from mailgate.queue import states
from mailgate.queue.backend import Connection
from mailgate.queue.leases import Ended
from mailgate.queue.ops import OnDone, finish_or_keep
from mailgate.queue.retry import expired_reply

Cursor = tuple[float, str]
"""(received_at, queue id) of the last message a walk looked at."""


@dataclass(frozen=True, slots=True)
class ExpiryPass:
    """Recipients one walk bounced, the reports it queued, and where the next one starts
    (None: at the oldest message again)."""

    expired: tuple[Ended, ...] = ()
    done: tuple[tuple[str, Any], ...] = ()
    cursor: Cursor | None = None


def expire_waiting(
    conn: Connection,
    now: float,
    lifetime: float,
    cursor: Cursor | None,
    on_done: OnDone | None = None,
    limit: int = 100,
) -> ExpiryPass:
    """Bounce the waiting recipients of up to `limit` open messages older than `lifetime`."""
    sql = "SELECT id, received_at FROM messages WHERE done_at IS NULL AND received_at <= ?"
    params: list[Any] = [now - lifetime]
    if cursor is not None:
        sql += " AND (received_at > ? OR (received_at = ? AND id > ?))"
        params += [cursor[0], cursor[0], cursor[1]]
    messages = conn.execute(sql + " ORDER BY received_at, id LIMIT ?", [*params, limit]).fetchall()
    expired: list[Ended] = []
    done: list[tuple[str, Any]] = []
    for queue_id, _ in messages:
        bounced = _bounce_waiting(conn, queue_id, now)
        if bounced:
            expired += bounced
            finished, extra = finish_or_keep(conn, queue_id, now, on_done)
            if finished or extra is not None:
                done.append((queue_id, extra))
    last = (float(messages[-1][1]), str(messages[-1][0])) if len(messages) == limit else None
    return ExpiryPass(tuple(expired), tuple(done), last)


def _bounce_waiting(conn: Connection, queue_id: str, now: float) -> list[Ended]:
    waiting = conn.execute(
        "SELECT id, address, connector, last_reply, internal_failures FROM recipients "
        f"WHERE message_id = ? AND state {states.WAITING} ORDER BY id",
        (queue_id,),
    ).fetchall()
    ended = []
    for rid, address, connector, last, failures in waiting:
        reply = expired_reply(last or "never attempted")
        conn.execute(
            "UPDATE recipients SET state = 'bounced', last_reply = ?, updated_at = ? WHERE id = ?",
            (reply, now, rid),
        )
        ended.append(
            Ended(queue_id, address, connector, RecipientState.BOUNCED, int(failures), reply)
        )
    return ended
