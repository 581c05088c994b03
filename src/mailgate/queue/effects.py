"""After-commit effects of the queue's writes: wake-ups, and the events of reports queued.

A commit that makes work due wakes the threads of the connectors it is for: new mail,
a report queued (it is due at once), recipients requeued, released, retried or routed
again. A commit that queued a report, dropped one or could not build one says so
(events 2117-2121). The store gives each write's Future to `Effects.follow`; the effects
run once the Future resolved with a result: never before the commit is durable, never
for a write that failed. They run in the thread that resolved it (the commit thread,
or the caller of a DirectWriter), so they are cheap and never block: a wake-up is a
hint (the scheduler still finds due work), and an effect that raises costs event 4050,
never the commit. A committed batch's effects run once every caller of the batch was
told (commit_sync.after_settled): wake-ups and events never delay a reply; and the
batch wakes each connector once, after all of its effects, however many of its writes
asked (in a receive process each wake-up is a datagram to the interchange). Callers
report nothing of this themselves.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mailgate.dsn.generate import BounceResult
from mailgate.model import NewMessage, RecipientState
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.admin import Changed, Finished
from mailgate.queue.commit_sync import after_settled, batch_effects
from mailgate.queue.expiry import ExpiryPass
from mailgate.queue.leases import LeasesEnded
from mailgate.queue.ops import Recorded, ReportFailed
from mailgate.queue.reroute import Rerouted

T = TypeVar("T")


class Waker(Protocol):
    """Wakes idle threads of connectors: queue/wakeup.py in the service, the control
    socket's `wake` from the command line."""

    def notify(self, *connectors: str) -> None: ...

    def notify_all(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Aftermath:
    """What one commit owes: connectors to wake (`everything`: every connector), and the
    reports to tell of (results of the `on_done` hook or the delay warner)."""

    wake: tuple[str, ...] = ()
    everything: bool = False
    reports: tuple[Any, ...] = ()


class Effects:
    """Given to the QueueStore at wiring time; both parts are optional."""

    def __init__(self, wakeup: Waker | None = None, events: EventLog | None = None) -> None:
        self.wakeup = wakeup
        self.events = events
        self._batch = _Waking()  # the connectors a batch's effects asked to wake, so far

    def follow(
        self, name: str, future: Future[T], aftermath: Callable[[T], Aftermath]
    ) -> Future[T]:
        """Run `aftermath(result)`'s effects once `future` (the write `name`) has a result;
        returns `future`."""
        if self.wakeup is not None or self.events is not None:
            future.add_done_callback(
                lambda done: after_settled(lambda: self._after(name, done, aftermath))
            )
        return future

    def _after(self, name: str, future: Future[T], aftermath: Callable[[T], Aftermath]) -> None:
        try:
            value = future.result(0)  # one look at the future, not three: it runs per commit
        except BaseException:  # failed or cancelled: nothing was committed, nothing is owed
            return
        try:
            self.apply(aftermath(value), name)
        except Exception as exc:  # a bug here must not end the thread that committed
            if self.events is not None:
                self.events.emit(
                    catalog.QUEUE_EFFECT_FAILED,
                    operation=name,
                    error=repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )

    def apply(self, after: Aftermath, operation: str = "effects") -> None:
        """Wake and report what `after` says (`operation`: the write it follows)."""
        if not after.reports and not after.everything:  # most commits: new mail, no report
            if after.wake and self.wakeup is not None:
                self._wake(after.wake, operation)
            return
        wake = dict.fromkeys(after.wake)
        for result in after.reports:
            if isinstance(result, BounceResult) and result.bounce_id and result.connector:
                wake[result.connector] = None
        if self.wakeup is not None:
            if after.everything:
                self.wakeup.notify_all()
            elif wake:
                self._wake(tuple(wake), operation)
        if self.events is not None:
            for result in after.reports:
                report(self.events, result)

    def _wake(self, connectors: tuple[str, ...], operation: str) -> None:
        """Wake `connectors`: once per batch, after all of the batch's effects, when this
        runs among them (a datagram per connector per batch, not per message)."""
        assert self.wakeup is not None
        running, state = batch_effects(), self._batch
        if running is None:
            self.wakeup.notify(*connectors)
        elif state.running is running:  # this batch wakes already: add to it
            state.pending.update(dict.fromkeys(connectors))
            state.operations[operation] = None
        else:  # (a batch whose effects were cut short left its state: never reused)
            state.running, state.pending = running, dict.fromkeys(connectors)
            state.operations = {operation: None}
            running.append(functools.partial(self._wake_batch, state.pending, state.operations))

    def _wake_batch(self, pending: dict[str, None], operations: dict[str, None]) -> None:
        self._batch.running = None
        try:
            if self.wakeup is not None:
                self.wakeup.notify(*pending)
        except Exception as exc:  # a bug here must not end the thread that committed
            if self.events is not None:
                self.events.emit(
                    catalog.QUEUE_EFFECT_FAILED,
                    operation=", ".join(operations),
                    error=repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )


class _Waking(threading.local):
    running: list[Callable[[], None]] | None = None  # the batch `pending` is for
    pending: dict[str, None]
    operations: dict[str, None]  # the writes that asked

    def __init__(self) -> None:
        self.pending, self.operations = {}, {}


def report(events: EventLog, result: object) -> None:
    """Events for a report a commit queued (2117, 2119) or dropped (2118), or one that
    could not be built (2120, 2121); nothing for anything else."""
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


# --- what each write owes --------------------------------------------------------------------
def _reports(done: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(d for d in done if d is not None)


def enqueued(message: NewMessage) -> Callable[[Any], Aftermath]:
    """New mail is due at once for its recipients' connectors (none for the ones queued
    already bounced); a message bounced as a whole queued its report."""
    wake = tuple(dict.fromkeys(r.connector for r in message.recipients if r.failed_reply is None))
    return lambda done: Aftermath(wake, reports=_reports([done]))


def recorded(now: float) -> Callable[[Sequence[Recorded]], Aftermath]:
    """Outcomes recorded: the reports of the messages they finished, and any recipient
    deferred to a retry that is already due."""

    def aftermath(items: Sequence[Recorded]) -> Aftermath:
        due = (
            r.outcome.claim.connector
            for r in items
            if r.state is RecipientState.DEFERRED and r.retry_at is not None and r.retry_at <= now
        )
        return Aftermath(tuple(dict.fromkeys(due)), reports=_reports(r.done for r in items))

    return aftermath


def leases_ended(ended: LeasesEnded) -> Aftermath:
    """Requeued recipients are due at once; bounced ones may have finished messages."""
    return Aftermath(ended.due, reports=_reports(extra for _, extra in ended.done))


def expired(found: ExpiryPass) -> Aftermath:
    return Aftermath(reports=_reports(extra for _, extra in found.done))


def rerouted(results: Sequence[Rerouted]) -> Aftermath:
    """Recipients moved to another connector are due there at once."""
    moved = (name for r in results for name, count in r.moved if count)
    reports = _reports(extra for r in results for _, extra in r.done)
    return Aftermath(tuple(dict.fromkeys(moved)), reports=reports)


def warned(results: Sequence[Any]) -> Aftermath:
    return Aftermath(reports=_reports(results))


def changed(result: Changed) -> Aftermath:
    """Recipients released or retried are due now: on the connectors the change touched,
    or on every connector for a bulk change over all of them."""
    if not result.count:
        return Aftermath()
    return Aftermath(result.connectors, everything=not result.connectors)


def finished(result: Finished) -> Aftermath:
    """A delete with a report, or a return to the sender, queued the report."""
    return Aftermath(reports=_reports([result.done]) if result.finished else ())
