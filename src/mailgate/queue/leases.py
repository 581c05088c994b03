"""Attempts that end without an outcome: leases that run out, or whose holder is gone.

A lease ends without an outcome when it runs out (its thread is stuck), when its
thread stalled or died, or when its worker process or the whole service died. Each
such end is an attempt that failed by internal error (Q151791: a delivery that hangs
or kills its worker every time must not be resubmitted forever). It is written to
`attempts` and counted in `internal_failures`; at the limit the recipient is
quarantined. A message past its lifetime is bounced (Q237182), with a report. The
rest goes back in the queue, due at once and marked `released` (it may have been
delivered). Leases given back deliberately (at a start after a clean stop) are no
attempt's end: ops.release_leases puts them back without counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailgate.model import Disposition, RecipientState
from mailgate.queue.backend import Connection
from mailgate.queue.ops import OnDone, finish_or_keep
from mailgate.queue.retry import RetryPolicy, expired_reply

_CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit


@dataclass(frozen=True, slots=True)
class Ended:
    """A recipient whose attempt ended without an outcome and that was not requeued."""

    queue_id: str
    address: str
    connector: str
    state: RecipientState  # QUARANTINED or BOUNCED
    failures: int
    reply: str


@dataclass(frozen=True, slots=True)
class LeasesEnded:
    """What ending leases did: recipients requeued, set aside or bounced, reports queued."""

    requeued: int = 0
    ended: tuple[Ended, ...] = ()
    done: tuple[tuple[str, Any], ...] = ()  # (queue id, on_done result) of finished messages
    due: tuple[str, ...] = ()  # the connectors of the requeued recipients (due at once)

    @property
    def count(self) -> int:
        return self.requeued + len(self.ended)


def end_leases(
    conn: Connection,
    now: float,
    reason: str,
    *,
    max_internal: int,
    policy: RetryPolicy,
    on_done: OnDone | None = None,
    owner_prefix: str | None = None,
    expired_only: bool = False,
) -> LeasesEnded:
    """End leases without an outcome: the expired ones, one owner's (by prefix), or all."""
    where, params = "r.state = 'active'", list[Any]()
    if expired_only:
        where += " AND r.lease_until < ?"
        params.append(now)
    if owner_prefix is not None:
        where += " AND substr(r.lease_owner, 1, ?) = ?"
        params += [len(owner_prefix), owner_prefix]
    rows = conn.execute(
        "SELECT r.id, r.message_id, r.address, r.connector, r.internal_failures, "
        "r.updated_at, m.received_at FROM recipients r JOIN messages m ON m.id = r.message_id "
        f"WHERE {where} ORDER BY r.id",
        params,
    ).fetchall()
    ended_reply = f"451 4.3.0 attempt ended without an outcome: {reason}"
    requeue: list[int] = []
    due: dict[str, None] = {}
    ended: list[Ended] = []
    for rid, queue_id, address, connector, before, claimed, received in rows:
        _attempt(conn, rid, queue_id, float(claimed), now, ended_reply)
        failures = int(before) + 1
        if failures >= max_internal:
            reply = f"{ended_reply} ({failures} internal failures: quarantined)"
            _set(conn, rid, RecipientState.QUARANTINED, reply, now)
            ended.append(Ended(queue_id, address, connector, RecipientState.QUARANTINED,
                               failures, reply))  # fmt: skip
        elif policy.expired(float(received), now):
            reply = expired_reply(f"its last attempt ended without an outcome ({reason})")
            _set(conn, rid, RecipientState.BOUNCED, reply, now)
            ended.append(Ended(queue_id, address, connector, RecipientState.BOUNCED,
                               failures, reply))  # fmt: skip
        else:
            requeue.append(rid)
            due[str(connector)] = None
    _requeue(conn, requeue, ended_reply, now)
    done = []
    for queue_id in dict.fromkeys(e.queue_id for e in ended if e.state is RecipientState.BOUNCED):
        finished, extra = finish_or_keep(conn, queue_id, now, on_done)
        if finished or extra is not None:
            done.append((queue_id, extra))
    return LeasesEnded(len(requeue), tuple(ended), tuple(done), tuple(due))


def _attempt(conn: Connection, rid: int, queue_id: str, started: float, now: float,
             reply: str) -> None:  # fmt: skip
    conn.execute(
        "INSERT INTO attempts (recipient_id, message_id, started_at, finished_at, "
        "disposition, reply) VALUES (?, ?, ?, ?, ?, ?)",
        (rid, queue_id, started, now, Disposition.INTERNAL_ERROR.value, reply),
    )


def _set(conn: Connection, rid: int, state: RecipientState, reply: str, now: float) -> None:
    conn.execute(
        "UPDATE recipients SET state = ?, lease_owner = NULL, lease_until = NULL, released = 1, "
        "internal_failures = internal_failures + 1, last_reply = ?, updated_at = ? WHERE id = ?",
        (state.value, reply, now, rid),
    )


def _requeue(conn: Connection, ids: Sequence[int], reply: str, now: float) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        conn.execute(
            "UPDATE recipients SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
            "released = 1, due_at = ?, internal_failures = internal_failures + 1, "
            f"last_reply = ?, updated_at = ? WHERE id IN ({','.join('?' * len(chunk))})",
            (now, reply, now, *chunk),
        )
