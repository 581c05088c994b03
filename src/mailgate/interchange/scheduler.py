"""The scheduler thread: lease expiry, wake-ups, the connector stall watch, purging.

Every second it ends leases that ran out (a thread or process died holding
them), expires recipients past the maximum lifetime that no attempt ends (never
claimed: queue/expiry.py), routes again the waiting mail of connectors the
configuration no longer has (queue/reroute.py), wakes the threads of any
connector with due work (work a commit made due the queue wakes at once: this
finds what became due with time, a deferral's retry), and asks the stall watch
whether a connector has due mail but completes no attempts (events 5006/5007,
repeated until it clears; whether mail is due is an index seek, how much is counted
only for the report), and writes the tracking keys of the messages queued since
(queue/track.py). Every few minutes it purges finished messages older
than keep_done. All of it is indexed queries; nothing scans the queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from mailgate.errors import StoreError
from mailgate.interchange.ended import report_ended, report_set_aside
from mailgate.interchange.state import Connectors
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue import track
from mailgate.queue.expiry import Cursor, ExpiryPass
from mailgate.queue.leases import LeasesEnded
from mailgate.queue.reader import QueueReader
from mailgate.queue.reroute import Rerouted, Route
from mailgate.queue.store import STORE_WAIT, QueueStore
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.watch import ConnectorWatch, Load

TICK = 1.0
WARN_EVERY = 60.0
PURGE_EVERY = 300.0
TRACK_ROUNDS = 50


class Scheduler:
    def __init__(
        self,
        store: QueueStore,
        wakeup: Wakeup,
        events: EventLog,
        connectors: Connectors,
        *,
        keep_done: float,
        stall_after: float,
        threads_summary: Callable[[str], str] = lambda connector: "",
        delay_warning: float = 0.0,
        counters: Counters | None = None,
        route: Route | None = None,
        known_connectors: Callable[[], Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """`route` gives an address's connector by the current rules and
        `known_connectors` the connectors of the current configuration (both follow a
        reload): waiting mail of any other connector is routed again. `clock` is the
        wall clock the stall watch reads, `timer` the monotonic one that paces delay
        warnings and purges (tests give both)."""
        self._clock, self._timer = clock, timer
        self._next_purge = timer() + PURGE_EVERY
        self._next_track_report = timer()
        self._next_warning = timer() + min(WARN_EVERY, delay_warning or WARN_EVERY)
        self.route = route
        self.known_connectors = known_connectors or connectors.names
        self.delay_warning = delay_warning
        self.counters = counters or Counters()
        self._expiry_cursor: Cursor | None = None
        self.store = store
        self.wakeup = wakeup
        self.events = events
        self.connectors = connectors
        self.keep_done = keep_done
        self.watch = ConnectorWatch(stall_after)
        self.threads_summary = threads_summary

    def __call__(self, handle: ThreadHandle) -> None:
        reader = self.store.reader()
        try:
            while not handle.wait(TICK):
                handle.busy()
                self.tick(reader)
                handle.progress()
                handle.idle()
        finally:
            reader.close()

    def tick(self, reader: QueueReader) -> None:
        """One pass (every TICK): recover, wake and watch; warn and purge when their time
        has come. `reader` is the calling thread's own."""
        self._recover()
        self._wake_and_watch(reader)
        if self.delay_warning and self._timer() >= self._next_warning:
            self._warn_delayed()
            self._next_warning = self._timer() + min(WARN_EVERY, self.delay_warning)
        if self._timer() >= self._next_purge:
            self._purge()
            self._next_purge = self._timer() + PURGE_EVERY
        self._index_tracking()

    def _recover(self) -> None:
        """Work no thread would ever finish, found again; the three share one commit."""
        ending = self.store.end_leases("its lease ran out", expired_only=True)
        expiring = self.store.expire_waiting(self._expiry_cursor)
        known = self.known_connectors()
        rerouting = self.store.reroute_vanished(known, self.route) if self.route else None
        self._expire(ending.result(STORE_WAIT))
        self._expire_waiting(expiring.result(STORE_WAIT))
        if rerouting is not None:
            self._reroute_vanished(rerouting.result(STORE_WAIT))

    def _index_tracking(self) -> None:
        """The tracking keys of what was queued since the last tick (queue/track.py): a
        batch per commit, so that none holds the writer lock for long, and at most
        TRACK_ROUNDS of them per tick, far more than the service accepts in one. Last in
        the tick, and a failure of its own (event 4070, once a minute while it lasts): no
        lookup depends on it for completeness, so nothing else waits for it."""
        try:
            for _ in range(TRACK_ROUNDS):
                if self.store.index_tracking().result(STORE_WAIT) < track.BATCH:
                    return
        except (StoreError, TimeoutError) as exc:
            if self._timer() >= self._next_track_report:
                self.events.emit(catalog.TRACKING_KEYS_FAILED, error=str(exc) or repr(exc))
                self._next_track_report = self._timer() + WARN_EVERY

    def _expire(self, ended: LeasesEnded) -> None:
        """Leases that ran out ended their attempts (counted: see queue/leases.py)."""
        if ended.count:  # the queue woke the connectors whose recipients are due again
            report_ended(self.events, ended, "after lease expiry")

    def _expire_waiting(self, found: ExpiryPass) -> None:
        """Recipients nobody attempts expire too: one bounded walk per tick."""
        self._expiry_cursor = found.cursor
        if not found.expired:
            return
        report_set_aside(self.events, found.expired, found.done)
        for item in found.expired:
            self.counters.add(metrics.EXPIRED, connector=item.connector)

    def _reroute_vanished(self, results: list[Rerouted]) -> None:
        """Waiting mail of a connector the configuration no longer has was routed again
        by the current rules, or bounced (Q243701); right after a start or a reload."""
        for result in results:
            moved = ", ".join(f"{count} to {name}" for name, count in result.moved) or "none"
            self.events.emit(
                catalog.RECIPIENTS_REROUTED,
                connector=result.connector,
                rerouted=result.rerouted,
                moved=moved,
                bounced=len(result.bounced),
            )
            report_set_aside(self.events, result.bounced, result.done)
            for outcome, count in (("rerouted", result.rerouted), ("bounced", len(result.bounced))):
                self.counters.add(
                    metrics.REROUTED, count, connector=result.connector, outcome=outcome
                )

    def _wake_and_watch(self, reader: QueueReader) -> None:
        now = self._clock()
        # Whether anything is due is two index seeks; how much, and how old, is counted
        # only for a stall report: every second over a million due would cost a core.
        loads = {
            name: Load(int(reader.has_due(name, now)), 0.0) for name in self.connectors.names()
        }
        due_now = [name for name, load in loads.items() if load.due]
        if due_now:
            self.wakeup.notify(*due_now)
        states = self.connectors.by_name
        reports = self.watch.check(
            now,
            loads,
            {name: state.last_completed for name, state in states.items()},
            {name for name, state in states.items() if state.paused},
        )
        for report in reports:
            if report.stalled:
                due, oldest = reader.due_load(report.connector, now)
                self.events.emit(
                    catalog.CONNECTOR_STALLED,
                    connector=report.connector,
                    due=due,
                    oldest=round(now - oldest) if oldest is not None else 0,
                    seconds=round(report.seconds),
                    threads=self.threads_summary(report.connector),
                )
            else:
                self.events.emit(
                    catalog.CONNECTOR_RECOVERED,
                    connector=report.connector,
                    seconds=round(report.seconds),
                )

    def _warn_delayed(self) -> None:
        """Delay warnings are queued (and reported, and their connectors woken) by the
        queue; waiting for the commit keeps one pass of them at a time."""
        self.store.warn_delayed(self.delay_warning).result(STORE_WAIT)

    def _purge(self) -> None:
        count = self.store.purge_done(self.keep_done).result(STORE_WAIT)
        if count:
            self.events.emit(catalog.MESSAGES_PURGED, count=count, age=f"{self.keep_done:.0f}s")
