"""Write operations of the queue, each a function over one open transaction.

They run inside the committer's shared transaction (group commit), each in its
own savepoint, so one failing operation never undoes another's work. Only
portable SQL is used. Transitions of a leased recipient are guarded by its lease
owner: a thread whose lease expired cannot overwrite another thread's outcome.
When the last recipient of a message reaches a final state, the `on_done` hook
runs in the same transaction (it queues the bounce, if one is owed) and then the
body is deleted: a bounce is never lost between "failed" and "reported". If the
hook raises while an outcome is recorded, the outcome still is, and the message is
kept for the administrator with its report owed (ReportFailed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailgate.model import Claim, Disposition, MessageKind, NewMessage, Outcome, RecipientState
from mailgate.queue import revoke, states
from mailgate.queue.backend import Connection
from mailgate.queue.retry import RetryPolicy, expired_reply
from mailgate.supervise import faults

OnDone = Callable[[Connection, str, float], Any]
"""Called with (connection, queue id, now) when a message's recipients are all final."""


_MESSAGE_INSERT = (
    "INSERT INTO messages (id, received_at, sender, size, client, header_message_id, "
    "smtputf8, kind, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BODY_INSERT = "INSERT INTO bodies (message_id, data) VALUES (?, ?)"
_RECIPIENTS_INSERT = (
    "INSERT INTO recipients (message_id, address, connector, state, due_at, last_reply, "
    "updated_at) VALUES "
)


def insert_message(conn: Connection, msg: NewMessage, on_done: OnDone | None = None) -> Any:
    """Queue a message; returns what `on_done` returned if every recipient was already final.

    Where the store can write several tables in one statement (PostgreSQL), the message,
    its body and its recipients are one statement: one round trip per message."""
    head = (
        msg.queue_id,
        msg.received_at,
        msg.sender,
        len(msg.body),
        msg.client,
        msg.header_message_id,
        int(msg.smtputf8),
        msg.kind.value,
        msg.origin,
    )
    rows = [
        (
            msg.queue_id,
            rcpt.address,
            rcpt.connector,
            "bounced" if rcpt.failed_reply is not None else "queued",
            msg.received_at,
            rcpt.failed_reply,
            msg.received_at,
        )
        for rcpt in msg.recipients
    ]
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    flat = [value for row in rows for value in row]
    if conn.dialect.writing_ctes and rows:
        conn.execute(
            f"WITH m AS ({_MESSAGE_INSERT}), b AS ({_BODY_INSERT}) {_RECIPIENTS_INSERT}{values}",
            (*head, msg.queue_id, msg.body, *flat),
        )
        faults.check("queue.insert")  # tests: a failure after the writes leaves nothing
    else:
        conn.execute(_MESSAGE_INSERT, head)
        conn.execute(_BODY_INSERT, (msg.queue_id, msg.body))
        faults.check("queue.insert")  # tests: a failure half-way must leave nothing behind
        if rows:
            conn.execute(_RECIPIENTS_INSERT + values, flat)
    if all(r.failed_reply is not None for r in msg.recipients):
        return finish_if_done(conn, msg.queue_id, msg.received_at, on_done)[1]
    return None


_CLAIM_COLUMNS = (
    "r.id, r.message_id, r.address, r.connector, m.sender, m.received_at, r.attempts, "
    "r.internal_failures, r.released, m.smtputf8, m.kind"
)


def claim(
    conn: Connection, connector: str, owner: str, limit: int, now: float, lease: float
) -> list[Claim]:
    """Lease up to `limit` due recipients of `connector` to `owner`, oldest due first.

    A suspect, a recipient whose last attempt ended without an outcome (it may have hung
    or killed its thread), is claimed alone with its message, never in a batch of other
    mail: if it ends its worker again, only it is counted for that (queue/leases.py).
    Where the store has several writers at once (PostgreSQL), the rows are locked as they
    are found and rows another claim holds are skipped, so claims never wait on each other."""
    due = conn.execute(
        "SELECT id, message_id, released * internal_failures FROM recipients "
        f"WHERE connector = ? AND state {states.WAITING} AND due_at <= ? "
        "ORDER BY due_at, id LIMIT ?"
        + (" FOR UPDATE SKIP LOCKED" if conn.dialect.skip_locked else ""),
        (connector, now, limit),
    ).fetchall()
    if not due:
        return []
    ids = _without_suspects_mixed_in(due)
    marks = ",".join("?" * len(ids))
    conn.execute(
        "UPDATE recipients SET state = 'active', lease_owner = ?, lease_until = ?, "
        f"attempts = attempts + 1, updated_at = ? WHERE id IN ({marks})",
        (owner, now + lease, now, *ids),
    )
    found = conn.execute(
        f"SELECT {_CLAIM_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id "
        f"WHERE r.id IN ({marks}) ORDER BY r.message_id, r.id",
        ids,
    ).fetchall()
    return [
        Claim(
            recipient_id=row[0],
            queue_id=row[1],
            address=row[2],
            connector=row[3],
            sender=row[4],
            received_at=row[5],
            attempts=row[6],
            internal_failures=row[7],
            redelivery=bool(row[8]),
            smtputf8=bool(row[9]),
            kind=MessageKind(row[10]),
        )
        for row in found
    ]


def _without_suspects_mixed_in(due: Sequence[Any]) -> list[int]:
    """Ids to claim of (id, message id, suspect) rows in due order: the first suspect's
    message alone if it comes first, else everything due before the first suspect."""
    first = next((n for n, row in enumerate(due) if row[2]), None)
    if first is None:
        return [row[0] for row in due]
    if first == 0:
        return [row[0] for row in due if row[1] == due[0][1]]
    return [row[0] for row in due[:first]]


@dataclass(frozen=True, slots=True)
class Recorded:
    """How an outcome ended up in the queue; `done` is what on_done returned, if it ran."""

    outcome: Outcome
    state: RecipientState
    reply: str
    retry_at: float | None
    lease_lost: bool
    message_done: bool = False
    done: Any = None


def _next_state(
    outcome: Outcome, policy: RetryPolicy, max_internal: int, now: float
) -> tuple[RecipientState, str, float | None]:
    claim_, reply = outcome.claim, outcome.reply
    match outcome.disposition:
        case Disposition.DELIVERED:
            return RecipientState.DELIVERED, reply, None
        case Disposition.FAILED:
            return RecipientState.BOUNCED, reply, None
        case Disposition.INTERNAL_ERROR if claim_.internal_failures + 1 >= max_internal:
            return RecipientState.QUARANTINED, reply, None
        case _:
            if policy.expired(claim_.received_at, now):
                return RecipientState.BOUNCED, expired_reply(reply), None
            return RecipientState.DEFERRED, reply, now + policy.delay(claim_.attempts)


def record_outcomes(
    conn: Connection,
    outcomes: Sequence[Outcome],
    owner: str,
    policy: RetryPolicy,
    max_internal: int,
    now: float,
    on_done: OnDone | None = None,
) -> list[Recorded]:
    """Apply outcomes of one thread's attempts; finish messages whose recipients are all final."""
    results: list[Recorded] = []
    touched: dict[str, None] = {}
    for outcome in outcomes:
        state, reply, retry_at = _next_state(outcome, policy, max_internal, now)
        internal = int(outcome.disposition is Disposition.INTERNAL_ERROR)
        cur = conn.execute(
            "UPDATE recipients SET state = ?, due_at = COALESCE(?, due_at), lease_owner = NULL, "
            "lease_until = NULL, released = 0, internal_failures = internal_failures + ?, "
            "last_reply = ?, remote_mta = ?, updated_at = ? "
            "WHERE id = ? AND state = 'active' AND lease_owner = ?",
            (
                state.value,
                retry_at,
                internal,
                reply,
                outcome.remote_mta,
                now,
                outcome.claim.recipient_id,
                owner,
            ),
        )
        # A lost lease loses the outcome, unless it is a delivery that happened (revoke.py).
        lost = cur.rowcount == 0 and not revoke.settle_late_delivery(conn, outcome, now)
        if not lost or revoke.recipient_exists(conn, outcome.claim.recipient_id):
            conn.execute(
                "INSERT INTO attempts (recipient_id, message_id, started_at, finished_at, "
                "disposition, reply) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    outcome.claim.recipient_id,
                    outcome.claim.queue_id,
                    outcome.started_at,
                    outcome.finished_at,
                    outcome.disposition.value,
                    outcome.reply,
                ),
            )
        if not lost and state.final:
            touched[outcome.claim.queue_id] = None
        results.append(Recorded(outcome, state, reply, retry_at, lost))
    finished: dict[str, tuple[bool, Any]] = {}
    for queue_id in sorted(touched):  # one order of message locks: no deadlock between nodes
        done, extra = finish_or_keep(conn, queue_id, now, on_done)
        if done or extra is not None:
            finished[queue_id] = (done, extra)
    first: set[str] = set()
    final = []
    for r in results:
        queue_id = r.outcome.claim.queue_id
        is_first = queue_id in finished and queue_id not in first
        first.add(queue_id)
        done, extra = finished[queue_id] if is_first else (False, None)
        final.append(Recorded(r.outcome, r.state, r.reply, r.retry_at, r.lease_lost, done, extra))
    return final


@dataclass(frozen=True, slots=True)
class ReportFailed:
    """A report owed could not be built (a bug: `on_done` or the delay warner raised).

    For a finished message, its bounced recipients were quarantined instead and its body
    kept: the administrator sends the report later (`mailgate queue bounce`) rather than
    the sender never hearing of it (Postfix keeps such a message in its queue too). For a
    delay warning (`delayed`), the warning is given up: the message is still retried."""

    queue_id: str
    failed: tuple[str, ...]
    error: str
    delayed: bool = False


def finish_or_keep(
    conn: Connection, queue_id: str, now: float, on_done: OnDone | None
) -> tuple[bool, Any]:
    """finish_if_done, but a report that cannot be built never fails the record (nor kills
    the thread that recorded, whose batch would then be delivered again): the message is
    kept, its bounced recipients quarantined, and a ReportFailed returned."""
    conn.execute("SAVEPOINT finish")
    try:
        result = finish_if_done(conn, queue_id, now, on_done)
    except Exception as exc:  # whatever a bug in the report raises: one message, one event
        conn.execute("ROLLBACK TO SAVEPOINT finish")
        conn.execute("RELEASE SAVEPOINT finish")
        kept = conn.execute(
            "UPDATE recipients SET state = 'quarantined', updated_at = ? "
            "WHERE message_id = ? AND state = 'bounced' RETURNING address",
            (now, queue_id),
        ).fetchall()
        return False, ReportFailed(queue_id, tuple(str(row[0]) for row in kept), repr(exc))
    conn.execute("RELEASE SAVEPOINT finish")
    return result


def finish_if_done(
    conn: Connection, queue_id: str, now: float, on_done: OnDone | None
) -> tuple[bool, Any]:
    """If no recipient of `queue_id` is still open: run on_done, drop the body, mark it done.

    Where writers run at once (PostgreSQL, READ COMMITTED), two transactions finishing
    the last two recipients of one message would each still see the other's as open, and
    neither would finish it: the message row is locked first, so the second waits for
    the first's COMMIT and then counts with the first's change in view."""
    if conn.dialect.row_locks:  # where writers run one at a time (SQLite) nobody else decides
        conn.execute(
            "SELECT id FROM messages WHERE id = ?" + conn.dialect.for_update(), (queue_id,)
        ).fetchone()
    row = conn.execute(
        f"SELECT COUNT(*) FROM recipients WHERE message_id = ? AND state {states.OPEN}",
        (queue_id,),
    ).fetchone()
    if row[0]:
        return False, None
    marked = conn.execute(
        "UPDATE messages SET done_at = ? WHERE id = ? AND done_at IS NULL", (now, queue_id)
    )
    if marked.rowcount == 0:
        return False, None  # finished earlier: never report twice
    extra = on_done(conn, queue_id, now) if on_done is not None else None
    conn.execute("DELETE FROM bodies WHERE message_id = ?", (queue_id,))
    return True, extra


def warn_delayed(
    conn: Connection, before: float, now: float, warn: OnDone, limit: int = 100
) -> list[Any]:
    """Run `warn` for up to `limit` unfinished, unwarned messages received before `before`."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM messages WHERE done_at IS NULL AND delay_warned = 0 "
            "AND received_at <= ? ORDER BY received_at LIMIT ?",
            (before, limit),
        ).fetchall()
    ]
    results = (_warn_one(conn, queue_id, now, warn) for queue_id in ids)
    return [result for result in results if result is not None]


def _warn_one(conn: Connection, queue_id: str, now: float, warn: OnDone) -> Any:
    """One delay warning; one that cannot be built is given up, never retried (it is a
    courtesy; retrying a bug every minute would only repeat it), and never raises."""
    conn.execute("SAVEPOINT warn")
    try:
        result = warn(conn, queue_id, now)
    except Exception as exc:
        conn.execute("ROLLBACK TO SAVEPOINT warn")
        conn.execute("RELEASE SAVEPOINT warn")
        conn.execute("UPDATE messages SET delay_warned = 1 WHERE id = ?", (queue_id,))
        return ReportFailed(queue_id, (), repr(exc), delayed=True)
    conn.execute("RELEASE SAVEPOINT warn")
    return result


def expire_leases(conn: Connection, now: float) -> int:
    """Put recipients whose lease ran out back in the queue, marked as possibly delivered."""
    cur = conn.execute(
        "UPDATE recipients SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
        "released = 1, due_at = ?, updated_at = ? WHERE state = 'active' AND lease_until < ?",
        (now, now, now),
    )
    return cur.rowcount


def release_leases(conn: Connection, now: float, owner_prefix: str | None = None) -> int:
    """Release every lease (at start, when this process owns the store) or one owner's."""
    sql = (
        "UPDATE recipients SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
        "released = 1, due_at = ?, updated_at = ? WHERE state = 'active'"
    )
    if owner_prefix is None:
        return conn.execute(sql, (now, now)).rowcount
    sql += " AND substr(lease_owner, 1, ?) = ?"
    return conn.execute(sql, (now, now, len(owner_prefix), owner_prefix)).rowcount


def origin_known(conn: Connection, origin: str) -> bool:
    """Whether a message with this origin (a pickup file's identity) is already queued."""
    row = conn.execute("SELECT 1 FROM messages WHERE origin = ? LIMIT 1", (origin,)).fetchone()
    return row is not None


def purge_done(conn: Connection, before: float, limit: int = 1000) -> int:
    """Delete up to `limit` finished messages (and their rows) finished before `before`."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM messages WHERE done_at IS NOT NULL AND done_at < ? LIMIT ?",
            (before, limit),
        ).fetchall()
    ]
    for queue_id in ids:
        conn.execute("DELETE FROM attempts WHERE message_id = ?", (queue_id,))
        conn.execute("DELETE FROM recipients WHERE message_id = ?", (queue_id,))
        conn.execute("DELETE FROM bodies WHERE message_id = ?", (queue_id,))
        conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
    return len(ids)
