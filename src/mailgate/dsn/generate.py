"""Queue the bounce a finished message owes, inside the transaction that finishes it.

Runs as the queue's `on_done` hook, before the original body is deleted. Rules:
- failed recipients of ordinary mail: one bounce to the envelope sender, naming
  only them; none for the null sender (never bounce a bounce to its sender);
- a bounce that could not be delivered goes to the postmaster once, as a
  double bounce; a double bounce that fails is dropped with an event;
- a sender no route serves gets no bounce: the postmaster gets it instead.
Building never raises on hostile content (see report.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgate.dsn.report import FailedRecipient, build_bounce
from mailgate.model import MessageKind, NewMessage, NewRecipient, new_queue_id
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Connection
from mailgate.queue.ops import ReportFailed, insert_message
from mailgate.supervise import faults

Route = Callable[[str], str | None]
"""Maps an address to the connector that delivers it, or None when no route serves it."""


@dataclass(frozen=True, slots=True)
class BounceResult:
    """What finishing a message produced: a queued bounce, a deliberate drop, or nothing owed."""

    queue_id: str
    failed: tuple[str, ...]
    bounce_id: str | None = None
    recipient: str | None = None
    kind: MessageKind | None = None
    dropped: str | None = None
    delayed: bool = False


class BounceGenerator:
    def __init__(self, hostname: str, postmaster: str, route: Route) -> None:
        self.hostname = hostname
        self.postmaster = postmaster
        self.route = route

    def __call__(self, conn: Connection, queue_id: str, now: float) -> BounceResult | None:
        row = conn.execute(
            "SELECT m.sender, m.received_at, m.kind, b.data FROM messages m "
            "LEFT JOIN bodies b ON b.message_id = m.id WHERE m.id = ?",
            (queue_id,),
        ).fetchone()
        failed = [
            FailedRecipient(address, reply or "554 5.0.0 delivery failed", remote)
            for address, reply, remote in conn.execute(
                "SELECT address, last_reply, remote_mta FROM recipients "
                "WHERE message_id = ? AND state = 'bounced' ORDER BY id",
                (queue_id,),
            ).fetchall()
        ]
        if row is None or not failed:
            return None
        sender, received_at, kind, body = row[0], row[1], MessageKind(row[2]), bytes(row[3] or b"")
        names = tuple(f.address for f in failed)
        target, new_kind = self._target(sender, kind)
        if target is None:
            why = "a double bounce failed" if kind is MessageKind.DOUBLE_BOUNCE else "null sender"
            return BounceResult(queue_id, names, dropped=why)
        connector = self.route(target)
        if connector is None and new_kind is MessageKind.BOUNCE:
            target, new_kind = self.postmaster, MessageKind.DOUBLE_BOUNCE
            connector = self.route(target)
        if connector is None:
            return BounceResult(queue_id, names, dropped=f"no route to {target}")
        bounce_id = new_queue_id(now)
        faults.check("dsn.build")  # tests: a report that cannot be built
        raw = build_bounce(
            queue_id=queue_id,
            bounce_id=bounce_id,
            sender=target,
            hostname=self.hostname,
            arrival=received_at,
            now=now,
            failed=failed,
            original=body,
        )
        insert_message(
            conn,
            NewMessage(
                queue_id=bounce_id,
                sender="",
                recipients=(NewRecipient(target, connector),),
                body=raw,
                received_at=now,
                client=f"mailgate dsn for {queue_id}",
                kind=new_kind,
            ),
        )
        return BounceResult(queue_id, names, bounce_id, target, new_kind)

    def warn_delayed(self, conn: Connection, queue_id: str, now: float) -> BounceResult | None:
        """Queue a "still being retried" report (Action: delayed) for a message's deferred
        recipients, once per message; never for bounces or the null sender."""
        conn.execute("UPDATE messages SET delay_warned = 1 WHERE id = ?", (queue_id,))
        row = conn.execute(
            "SELECT m.sender, m.received_at, m.kind, b.data FROM messages m "
            "JOIN bodies b ON b.message_id = m.id WHERE m.id = ?",
            (queue_id,),
        ).fetchone()
        if row is None or not row[0] or MessageKind(row[2]) is not MessageKind.NORMAL:
            return None
        waiting = [
            FailedRecipient(address, reply or "451 4.0.0 not yet delivered", remote)
            for address, reply, remote in conn.execute(
                "SELECT address, last_reply, remote_mta FROM recipients "
                "WHERE message_id = ? AND state = 'deferred' ORDER BY id",
                (queue_id,),
            ).fetchall()
        ]
        connector = self.route(row[0])
        if not waiting or connector is None:
            return None
        warning_id = new_queue_id(now)
        faults.check("dsn.build")
        raw = build_bounce(
            queue_id=queue_id, bounce_id=warning_id, sender=row[0], hostname=self.hostname,
            arrival=row[1], now=now, failed=waiting, original=bytes(row[3]), delayed=True,
        )  # fmt: skip
        insert_message(
            conn,
            NewMessage(
                queue_id=warning_id,
                sender="",
                recipients=(NewRecipient(row[0], connector),),
                body=raw,
                received_at=now,
                client=f"mailgate dsn for {queue_id}",
                kind=MessageKind.BOUNCE,
            ),
        )
        names = tuple(w.address for w in waiting)
        return BounceResult(queue_id, names, warning_id, row[0], MessageKind.BOUNCE, delayed=True)

    def _target(self, sender: str, kind: MessageKind) -> tuple[str | None, MessageKind]:
        if kind is MessageKind.DOUBLE_BOUNCE:
            return None, kind
        if kind is MessageKind.BOUNCE:
            return self.postmaster, MessageKind.DOUBLE_BOUNCE
        if not sender:
            return None, kind
        return sender, MessageKind.BOUNCE


def report_bounce(events: EventLog, result: object) -> None:
    """Events for a bounce that finishing a message queued (2117) or could not (2118),
    or a report that could not be built (2120, 2121)."""
    if isinstance(result, ReportFailed):
        _report_failed(events, result)
        return
    if not isinstance(result, BounceResult):
        return
    failed = ", ".join(f"<{a}>" for a in result.failed)
    if result.delayed:
        events.emit(
            catalog.NDR_DELAYED,
            queue_id=result.queue_id,
            bounce_id=result.bounce_id,
            recipient=result.recipient,
            failed=failed,
        )
    elif result.bounce_id is not None:
        events.emit(
            catalog.NDR_GENERATED,
            queue_id=result.queue_id,
            bounce_id=result.bounce_id,
            kind=result.kind,
            recipient=result.recipient,
            failed=failed,
        )
    else:
        events.emit(
            catalog.NDR_DROPPED, queue_id=result.queue_id, failed=failed, reason=result.dropped
        )


def _report_failed(events: EventLog, result: ReportFailed) -> None:
    if result.delayed:
        events.emit(catalog.DELAY_WARNING_FAILED, queue_id=result.queue_id, error=result.error)
        return
    failed = ", ".join(f"<{a}>" for a in result.failed) or "none"
    events.emit(catalog.NDR_FAILED, queue_id=result.queue_id, failed=failed, error=result.error)
