"""Administrative write operations of the queue (`mailgate queue ...`), each over one open
transaction, like ops.py.

The command-line tool runs each command as one of these functions in one transaction of
its own (a DirectWriter), whether the service runs or not: a command changes everything
it names or nothing. Only portable SQL is used.

A recipient being delivered (state `active`, its lease not yet expired) is taken from
its thread first, never changed under its feet: `hold(revoke=True)` and `take_over`
revoke the live leases of one message (revoke.py: the recipients become held, the
thread's outcome is discarded unless it is a delivery that happened), and the command
then asks the running service to cancel the attempts. Delete and bounce of such a
message first `take_over` (hold) it, learn what the attempts in flight came to, then
finish it in a second transaction, so a report never claims a delivered recipient
failed. The operations themselves still refuse, with `LeaseHeld`, to change a recipient
whose lease is live. Bulk commands (`hold --all`) leave leased recipients alone and
report how many they skipped. A lease past its expiry is free, as the scheduler's lease
expiry treats it: such a recipient is handled like a queued one and marked `released`,
since the thread that held it may have delivered it.

Delete with a report and return-to-sender mark the open recipients bounced and then
finish the message through `ops.finish_if_done`, so the store's `on_done` hook
(dsn_source.ReportQueue) queues the bounce in the same transaction, exactly as when a
delivery fails permanently. The store (store.py) runs these for the command line and
owns what their commits owe afterwards: the wake-ups and the report's events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mailgate.errors import MailgateError
from mailgate.model import RecipientState
from mailgate.queue import history, ops, states
from mailgate.queue.backend import Connection
from mailgate.queue.revoke import Revoked, revoke

DELETED_REPLY = "554 5.7.0 deleted by the administrator"
RETURNED_REPLY = "554 5.7.0 returned by the administrator"

_OPEN = f"state {states.OPEN}"
_FREE_LEASE = "(state = 'active' AND lease_until < ?)"


class AdminError(MailgateError):
    """A queue command that cannot be carried out; nothing was changed."""


class NoSuchMessage(AdminError):
    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
        super().__init__(f"no message {queue_id} in the queue")


class NothingToDo(AdminError):
    """The message is there, but the command has nothing to act on."""


class LeaseHeld(AdminError):
    """A recipient the command would change is being delivered by a running thread."""

    def __init__(self, queue_id: str, address: str, owner: str | None, until: float) -> None:
        self.queue_id = queue_id
        self.address = address
        self.owner = owner
        self.until = until
        ends = time.strftime("%H:%M:%S", time.localtime(until))
        super().__init__(
            f"message {queue_id}: recipient <{address}> is being delivered now by "
            f"{owner or 'an unknown thread'} (lease until {ends}); nothing was changed, "
            "try again when the attempt is over"
        )


@dataclass(frozen=True, slots=True)
class Changed:
    """What a hold, release or retry changed: recipients, the connectors they belong to
    (empty for a bulk change over every connector), leased recipients left alone, and
    those taken from the thread delivering them (counted in `count`)."""

    queue_id: str | None
    count: int
    connectors: tuple[str, ...]
    skipped: int = 0
    revoked: tuple[Revoked, ...] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """What a delete or return did: open recipients it ended, whether the message finished
    here (then `done` is what on_done returned: the bounce), and whether it was removed."""

    queue_id: str
    closed: int
    finished: bool
    done: Any
    removed: bool


def resolve(conn: Connection, key: str) -> str:
    """The queue id `key` names (queue ids are upper-case hex; any case is accepted)."""
    queue_id = history.message_id(conn, key)
    if queue_id is None:
        raise NoSuchMessage(key.strip())
    return queue_id


def refuse_leased(conn: Connection, queue_id: str, now: float, connector: str | None) -> None:
    """Raise LeaseHeld if a live lease holds a recipient of `queue_id` (on `connector`)."""
    sql = (
        "SELECT address, lease_owner, lease_until FROM recipients WHERE message_id = ? "
        "AND state = 'active' AND lease_until >= ?"
    )
    params: list[Any] = [queue_id, now]
    if connector is not None:
        sql += " AND connector = ?"
        params.append(connector)
    row = conn.execute(sql + " ORDER BY id LIMIT 1", params).fetchone()
    if row is not None:
        raise LeaseHeld(queue_id, str(row[0]), row[1], float(row[2]))


def _scope(queue_id: str | None, connector: str | None) -> tuple[str, list[Any]]:
    """SQL conditions (each starting with AND) restricting a change to a message/connector."""
    sql, params = "", []
    if queue_id is not None:
        sql += " AND message_id = ?"
        params.append(queue_id)
    if connector is not None:
        sql += " AND connector = ?"
        params.append(connector)
    return sql, params


def _apply(
    conn: Connection, sql: str, params: list[Any], queue_id: str | None, connector: str | None
) -> tuple[int, tuple[str, ...]]:
    """Run an UPDATE; for one message, return the connectors it touched (bounded)."""
    if queue_id is None:
        count = conn.execute(sql, params).rowcount
        return count, (() if connector is None else (connector,))
    rows = conn.execute(sql + " RETURNING connector", params).fetchall()
    return len(rows), tuple(sorted({str(row[0]) for row in rows}))


def hold(
    conn: Connection,
    queue_id: str | None,
    now: float,
    connector: str | None = None,
    *,
    revoke_leases: bool = False,
) -> Changed:
    """Hold the waiting recipients of one message (or of every message): no thread claims
    a held recipient until it is released. Quarantined recipients stay quarantined.

    For one message, with `revoke_leases`, recipients being delivered are held too, taken
    from their threads (`Changed.revoked`); without, such a message is refused."""
    revoked: tuple[Revoked, ...] = ()
    if queue_id is not None:
        queue_id = resolve(conn, queue_id)
        if revoke_leases:
            revoked = revoke(conn, queue_id, now, connector)
        refuse_leased(conn, queue_id, now, connector)
    where, params = _scope(queue_id, connector)
    count, connectors = _apply(
        conn,
        "UPDATE recipients SET state = 'held', "
        "released = CASE WHEN state = 'active' THEN 1 ELSE released END, "
        "lease_owner = NULL, lease_until = NULL, updated_at = ? "
        f"WHERE (state {states.WAITING} OR {_FREE_LEASE}){where}",
        [now, now, *params],
        queue_id,
        connector,
    )
    skipped = 0
    if queue_id is None:
        row = conn.execute(
            f"SELECT COUNT(*) FROM recipients WHERE state = 'active' AND lease_until >= ?{where}",
            [now, *params],
        ).fetchone()
        skipped = int(row[0])
    if revoked:
        count += len(revoked)
        connectors = tuple(sorted({*connectors, *(r.connector for r in revoked)}))
    return Changed(queue_id, count, connectors, skipped, revoked)


def take_over(conn: Connection, queue_id: str, now: float) -> tuple[Revoked, ...]:
    """Before a delete or return of a message being delivered: hold all of it (nothing
    else is claimed meanwhile) and revoke its live leases. Changes nothing, and returns
    nothing, if no recipient of it is leased."""
    queue_id = resolve(conn, queue_id)
    revoked = revoke(conn, queue_id, now)
    if revoked:
        hold(conn, queue_id, now)
    return revoked


def release(
    conn: Connection, queue_id: str | None, now: float, connector: str | None = None
) -> Changed:
    """Put held recipients back in the queue, due now.

    For one message, quarantined recipients are released too, with a fresh budget of
    internal failures (the administrator looked at that message); a bulk release leaves
    quarantined (poison) messages alone.
    """
    if queue_id is not None:
        queue_id = resolve(conn, queue_id)
    held = [RecipientState.HELD] + ([RecipientState.QUARANTINED] if queue_id is not None else [])
    where, params = _scope(queue_id, connector)
    count, connectors = _apply(
        conn,
        "UPDATE recipients SET state = 'queued', due_at = ?, "
        "internal_failures = CASE WHEN state = 'quarantined' THEN 0 ELSE internal_failures END, "
        f"updated_at = ? WHERE state {states.sql_in(held)}{where}",
        [now, now, *params],
        queue_id,
        connector,
    )
    return Changed(queue_id, count, connectors)


def retry(
    conn: Connection, queue_id: str | None, now: float, connector: str | None = None
) -> Changed:
    """Make queued and deferred recipients due now (the next claim takes them)."""
    if queue_id is not None:
        queue_id = resolve(conn, queue_id)
    where, params = _scope(queue_id, connector)
    count, connectors = _apply(
        conn,
        "UPDATE recipients SET due_at = ?, updated_at = ? "
        f"WHERE state {states.WAITING} AND due_at > ?{where}",
        [now, now, now, *params],
        queue_id,
        connector,
    )
    return Changed(queue_id, count, connectors)


def _bounce_open(conn: Connection, queue_id: str, now: float, reply: str) -> int:
    """Mark every open recipient bounced with `reply` (live leases were refused before)."""
    return conn.execute(
        "UPDATE recipients SET state = 'bounced', last_reply = ?, remote_mta = NULL, "
        "lease_owner = NULL, lease_until = NULL, updated_at = ? "
        f"WHERE message_id = ? AND {_OPEN}",
        (reply, now, queue_id),
    ).rowcount


def delete(
    conn: Connection,
    queue_id: str,
    now: float,
    *,
    ndr: bool = False,
    on_done: ops.OnDone | None = None,
) -> Finished:
    """Remove a message: its recipients, attempts, body and record.

    With `ndr`, its open recipients are first bounced ("deleted by the administrator")
    and the message finished, so `on_done` queues the bounce before it is removed.
    """
    queue_id = resolve(conn, queue_id)
    refuse_leased(conn, queue_id, now, None)
    row = conn.execute(
        f"SELECT COUNT(*) FROM recipients WHERE message_id = ? AND {_OPEN}", (queue_id,)
    ).fetchone()
    closed, finished, done = int(row[0]), False, None
    if ndr and closed:
        _bounce_open(conn, queue_id, now, DELETED_REPLY)
        finished, done = ops.finish_if_done(conn, queue_id, now, on_done)
    for sql in (
        "DELETE FROM attempts WHERE message_id = ?",
        "DELETE FROM recipients WHERE message_id = ?",
        "DELETE FROM bodies WHERE message_id = ?",
        "DELETE FROM messages WHERE id = ?",
    ):
        conn.execute(sql, (queue_id,))
    return Finished(queue_id, closed, finished, done, removed=True)


def return_to_sender(
    conn: Connection, queue_id: str, now: float, on_done: ops.OnDone | None = None
) -> Finished:
    """Bounce every open recipient ("returned by the administrator") and finish the
    message: `on_done` queues the report to the sender, the body is dropped."""
    queue_id = resolve(conn, queue_id)
    refuse_leased(conn, queue_id, now, None)
    closed = _bounce_open(conn, queue_id, now, RETURNED_REPLY)
    if not closed:
        raise NothingToDo(f"message {queue_id}: every recipient is final; nothing to return")
    finished, done = ops.finish_if_done(conn, queue_id, now, on_done)
    return Finished(queue_id, closed, finished, done, removed=False)
