"""Taking a recipient from the thread delivering it: an administrator's command wins.

`revoke` ends the live leases on one message (or on one connector's recipients of it),
inside the administrator's transaction: the recipients become `held`, flagged
`released` (the attempt in flight may still deliver), and their lease owners are
returned, so the command can ask the running service to cancel those attempts. From
then on the thread's outcome is not recorded (ops.record_outcomes is guarded by the
lease owner), with one exception, `settle_late_delivery`: a delivery that did happen is
recorded as delivered while the recipient is only held, so releasing the message never
sends it a second time. `attempts_since` reads what the attempt in flight came to (its
attempt row is written even when its outcome is discarded). Only portable SQL is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.model import Disposition, Outcome
from mailgate.queue.backend import Connection


@dataclass(frozen=True, slots=True)
class Revoked:
    """A recipient taken from the thread that was delivering it."""

    recipient_id: int
    queue_id: str
    address: str
    connector: str
    owner: str  # the lease owner: host:pid:thread:generation:
    after: int  # the message's last attempt id when the lease was revoked

    @property
    def thread(self) -> str:
        parts = self.owner.rsplit(":", 4)
        return parts[2] if len(parts) == 5 else self.owner


def revoke(
    conn: Connection, queue_id: str, now: float, connector: str | None = None
) -> tuple[Revoked, ...]:
    """Take the live leases on `queue_id` (on `connector` only, if given); the recipients
    become held and flagged released. Returns what was taken (empty: nothing was leased)."""
    sql = (
        "SELECT id, address, connector, lease_owner FROM recipients WHERE message_id = ? "
        "AND state = 'active' AND lease_until >= ?"
    )
    params: list[Any] = [queue_id, now]
    if connector is not None:
        sql += " AND connector = ?"
        params.append(connector)
    rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    if not rows:
        return ()
    after = conn.execute(
        "SELECT COALESCE(MAX(id), 0) FROM attempts WHERE message_id = ?", (queue_id,)
    ).fetchone()[0]
    for row in rows:
        conn.execute(
            "UPDATE recipients SET state = 'held', released = 1, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (now, row[0]),
        )
    return tuple(
        Revoked(int(row[0]), queue_id, str(row[1]), str(row[2]), str(row[3] or ""), int(after))
        for row in rows
    )


def settle_late_delivery(conn: Connection, outcome: Outcome, now: float) -> bool:
    """Record a delivery whose lease was lost, if its recipient is only held (an
    administrator's hold revoked the lease while the attempt was in flight). True if so."""
    if outcome.disposition is not Disposition.DELIVERED:
        return False
    cur = conn.execute(
        "UPDATE recipients SET state = 'delivered', released = 0, last_reply = ?, "
        "remote_mta = ?, updated_at = ? WHERE id = ? AND state = 'held'",
        (outcome.reply, outcome.remote_mta, now, outcome.claim.recipient_id),
    )
    return cur.rowcount == 1


def recipient_exists(conn: Connection, recipient_id: int) -> bool:
    """Whether the recipient is still in the queue (a late outcome of a deleted message
    leaves no attempt row behind)."""
    row = conn.execute("SELECT 1 FROM recipients WHERE id = ?", (recipient_id,)).fetchone()
    return row is not None


def attempts_since(conn: Connection, revoked: Revoked) -> list[tuple[int, str, str]]:
    """Attempts on the revoked recipient recorded since its lease was revoked, oldest first:
    (recipient id, disposition, reply)."""
    rows = conn.execute(
        "SELECT recipient_id, disposition, reply FROM attempts WHERE message_id = ? "
        "AND id > ? AND recipient_id = ? ORDER BY id",
        (revoked.queue_id, revoked.after, revoked.recipient_id),
    ).fetchall()
    return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]
