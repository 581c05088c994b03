"""Decide and build the report a message owes, from plain data: no queue, no SQL.

The queue reads what a report needs into a `BounceSource` inside the transaction that
finishes the message (queue/dsn_source.py), asks `BounceGenerator` for the report and
queues what it returns in that same transaction; the queue's effects report the result
after the commit (events 2117-2119). Rules:
- failed recipients of ordinary mail: one bounce to the envelope sender, naming only
  them; none for the null sender (never bounce a bounce to its sender);
- a bounce that could not be delivered goes to the postmaster once, as a double bounce;
  a double bounce that fails is dropped with an event;
- a sender no route serves gets no bounce: the postmaster gets it instead.
Building never raises on hostile content (see report.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgate.dsn.report import FailedRecipient, build_bounce
from mailgate.model import MessageKind, new_queue_id
from mailgate.supervise import faults

Route = Callable[[str], str | None]
"""Maps an address to the connector that delivers it, or None when no route serves it."""


@dataclass(frozen=True, slots=True)
class ReportedRecipient:
    """A recipient a report names, with the last reply and remote MTA the queue holds."""

    address: str
    reply: str | None
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class BounceSource:
    """What the queue holds of a message a report is about: its envelope, its body (None
    once dropped) and the recipients to report (failed, or for a warning still deferred)."""

    queue_id: str
    sender: str
    received_at: float
    kind: MessageKind
    original: bytes | None
    recipients: tuple[ReportedRecipient, ...]


@dataclass(frozen=True, slots=True)
class BounceResult:
    """What finishing a message produced: a queued bounce (to `recipient`, delivered by
    `connector`), a deliberate drop, or nothing owed."""

    queue_id: str
    failed: tuple[str, ...]
    bounce_id: str | None = None
    recipient: str | None = None
    kind: MessageKind | None = None
    dropped: str | None = None
    delayed: bool = False
    connector: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """The generator's answer: what to say about it, and the report's bytes to queue under
    `result.bounce_id` (None when it is dropped)."""

    result: BounceResult
    body: bytes | None = None


class BounceGenerator:
    def __init__(self, hostname: str, postmaster: str, route: Route) -> None:
        self.hostname = hostname
        self.postmaster = postmaster
        self.route = route

    def bounce(self, source: BounceSource, now: float) -> Report | None:
        """The non-delivery report for the failed recipients of a finished message."""
        if not source.recipients:
            return None
        failed = [
            FailedRecipient(r.address, r.reply or "554 5.0.0 delivery failed", r.remote_mta)
            for r in source.recipients
        ]
        names = tuple(f.address for f in failed)
        target, new_kind = self._target(source.sender, source.kind)
        if target is None:
            kind = source.kind
            why = "a double bounce failed" if kind is MessageKind.DOUBLE_BOUNCE else "null sender"
            return Report(BounceResult(source.queue_id, names, dropped=why))
        connector = self.route(target)
        if connector is None and new_kind is MessageKind.BOUNCE:
            target, new_kind = self.postmaster, MessageKind.DOUBLE_BOUNCE
            connector = self.route(target)
        if connector is None:
            return Report(BounceResult(source.queue_id, names, dropped=f"no route to {target}"))
        bounce_id = new_queue_id(now)
        faults.check("dsn.build")  # tests: a report that cannot be built
        raw = build_bounce(
            queue_id=source.queue_id,
            bounce_id=bounce_id,
            sender=target,
            hostname=self.hostname,
            arrival=source.received_at,
            now=now,
            failed=failed,
            original=source.original or b"",
        )
        result = BounceResult(
            source.queue_id, names, bounce_id, target, new_kind, connector=connector
        )
        return Report(result, raw)

    def delay_warning(self, source: BounceSource, now: float) -> Report | None:
        """A "still being retried" report (Action: delayed) for a message's deferred
        recipients; never for bounces, the null sender, or a message without its body."""
        if not source.sender or source.kind is not MessageKind.NORMAL or source.original is None:
            return None
        waiting = [
            FailedRecipient(r.address, r.reply or "451 4.0.0 not yet delivered", r.remote_mta)
            for r in source.recipients
        ]
        connector = self.route(source.sender)
        if not waiting or connector is None:
            return None
        warning_id = new_queue_id(now)
        faults.check("dsn.build")
        raw = build_bounce(
            queue_id=source.queue_id, bounce_id=warning_id, sender=source.sender,
            hostname=self.hostname, arrival=source.received_at, now=now, failed=waiting,
            original=source.original, delayed=True,
        )  # fmt: skip
        names = tuple(w.address for w in waiting)
        result = BounceResult(
            source.queue_id, names, warning_id, source.sender, MessageKind.BOUNCE,
            delayed=True, connector=connector,
        )  # fmt: skip
        return Report(result, raw)

    def _target(self, sender: str, kind: MessageKind) -> tuple[str | None, MessageKind]:
        if kind is MessageKind.DOUBLE_BOUNCE:
            return None, kind
        if kind is MessageKind.BOUNCE:
            return self.postmaster, MessageKind.DOUBLE_BOUNCE
        if not sender:
            return None, kind
        return sender, MessageKind.BOUNCE
