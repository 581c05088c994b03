"""An interchange thread: claim due recipients of one connector, deliver, record.

The loop, per batch: claim (a lease in the queue), deliver each recipient
through the connector's per-thread session, flush the session (make the batch
durable at the destination), then record every outcome in one queue commit
(submitted just ahead of the next claim, so the two usually share it), and
only then write events (the reports that commit queued, and the wake-ups of
their connectors, are the queue's own: queue/effects.py). After a claim that found a
partial batch the connector's next claim, by whichever of its threads, waits until
`linger` has passed since it (a few milliseconds): at one message at a time it turns
batches of one into batches of several, and a claim that found nothing waits for a
wake-up and goes at once. Where the connector says so (its `helpers_on_backlog`: the
postoffice, whose deliveries are local and short), its second and later threads claim only
while there is a backlog: woken by a claim that found a full batch, by new mail while the
first thread has been in one batch for over STUCK_AFTER seconds (a hung mailbox, a fault),
or by their poll every IDLE_WAIT seconds; at one message at a time they cost nothing, and
a slow flush still has several batches in flight once mail queues up. A crash anywhere
before the record leaves the leases to be released and the recipients retried;
the postoffice connector makes such a retry idempotent. An unexpected exception
in one delivery is an internal error for that recipient only (event 2450;
quarantine after a few), never the end of the thread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from mailgate.errors import PermanentFailure, TemporaryFailure
from mailgate.headers import received_count
from mailgate.interchange.connector import Connector, ConnectorSession, Result
from mailgate.interchange.ended import report_ended
from mailgate.interchange.inflight import CANCELLED_REPLY, InFlight
from mailgate.interchange.state import ConnectorState
from mailgate.model import Claim, Disposition, Outcome, RecipientState
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.nodes import node_owner
from mailgate.queue.ops import Recorded
from mailgate.queue.reader import QueueReader
from mailgate.queue.store import STORE_WAIT, QueueStore
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise import faults
from mailgate.supervise.handle import ThreadHandle

IDLE_WAIT = 5.0
STUCK_AFTER = 0.5  # seconds in one batch after which the first thread's new mail spills over


def lease_owner(node: str, thread_name: str, generation: int | None = None) -> str:
    """Lease owner id of one life of a thread; without a generation, the prefix of all its
    lives. The ':' separators keep 'postoffice-1:' from prefixing 'postoffice-10:'; the node
    comes first, so `node_owner` is the prefix of every lease a node holds."""
    prefix = f"{node_owner(node)}{os.getpid()}:{thread_name}:"
    return prefix if generation is None else f"{prefix}{generation}:"


class InterchangeThread:
    """The body of one interchange thread (pass an instance to Supervisor.spawn)."""

    def __init__(
        self,
        connector: Connector,
        store: QueueStore,
        wakeup: Wakeup,
        events: EventLog,
        *,
        node: str,
        batch: int,
        linger: float = 0.0,
        max_received: int = 30,
        state: ConnectorState | None = None,
        recycle_after: int = 0,
        recycle_every: float = 0.0,
        counters: Counters | None = None,
        in_flight: InFlight | None = None,
        helpers_on_backlog: bool = False,
    ) -> None:
        self.connector = connector
        self.in_flight = in_flight or InFlight()  # what an administrator's command may cancel
        self.store = store
        self.wakeup = wakeup
        self.events = events
        self.node = node
        self.batch = batch
        self.linger = linger  # seconds between claims while they find partial batches
        # Shared by the connector's threads (one body runs in each): no claim before this
        # (monotonic), set by a claim that found a partial batch, cleared by a full one.
        self._quiet_until = 0.0
        self.helpers_on_backlog = helpers_on_backlog
        self._backlog = f"{connector.name} backlog"  # the wake-up key the helpers wait on
        self._first_busy_since: float | None = None  # the first thread, in a batch (monotonic)
        if helpers_on_backlog:
            wakeup.spill(connector.name, self._backlog, self._first_stuck)
        self.max_received = max_received
        self.state = state or ConnectorState(connector.name)
        self.recycle_after = recycle_after
        self.recycle_every = recycle_every
        self.counters = counters or Counters()

    def __call__(self, handle: ThreadHandle) -> None:
        """The body of the connector's first thread."""
        self._run(handle, helper=False)

    def helper(self) -> Callable[[ThreadHandle], None]:
        """The body of the connector's second and later threads: with `helpers_on_backlog`,
        they claim only while the connector has a backlog (see the module docstring)."""
        return functools.partial(self._run, helper=True)

    def _first_stuck(self) -> bool:
        since = self._first_busy_since
        return since is not None and time.monotonic() - since > STUCK_AFTER

    def _run(self, handle: ThreadHandle, *, helper: bool) -> None:
        owner = lease_owner(self.node, handle.name, handle.generation)
        # Leases earlier lives of this thread held (dead or abandoned) are ours to give back.
        previous = lease_owner(self.node, handle.name)
        # An earlier life that died holding leases ended those attempts without an outcome.
        ended = self.store.end_leases("its thread died", previous).result(STORE_WAIT)
        report_ended(self.events, ended, f"left by {handle.name} before restart")
        faults.check("interchange.context")
        session = self.connector.open()
        handle.on_abort(getattr(session, "abort", None))
        reader = self.store.reader()
        try:
            self._loop(handle, owner, session, reader, helper and self.helpers_on_backlog)
        except faults.FaultExit:
            return  # tests: a thread that ends without being asked to
        finally:
            handle.on_abort(None)
            session.close()
            reader.close()

    def _loop(
        self,
        handle: ThreadHandle,
        owner: str,
        session: ConnectorSession,
        reader: QueueReader,
        on_backlog: bool,
    ) -> None:
        name = self.connector.name
        # A helper waits on the backlog's wake-ups, never on the connector's own: each of
        # those (one per commit that made mail due) then wakes the first thread alone.
        key = self._backlog if on_backlog else name
        seen = self.wakeup.generation(key)
        waiting = on_backlog  # for a backlog: a helper's claim found a partial batch
        started, attempts = time.monotonic(), 0
        # A batch's outcomes are recorded while the next claim is submitted behind them, so
        # both usually share one commit: one wait on the queue per batch, not two. Events
        # and counters for a batch still come only after its record is committed.
        recording: Future[list[Recorded]] | None = None
        pending = 0  # attempts in `recording`
        try:
            while not handle.stopping:
                if handle.recycle:  # asked for by `mailgate ctl refresh`
                    break
                if self.state.paused:
                    attempts += self._recorded(recording)
                    recording, pending = None, 0
                    handle.idle()
                    seen = self.wakeup.wait(key, seen, IDLE_WAIT)
                    continue
                if waiting:
                    attempts += self._recorded(recording)
                    recording, pending = None, 0
                    handle.idle()
                    seen = self.wakeup.wait(key, seen, IDLE_WAIT)  # woken, or the poll
                    waiting = False  # claim once: a partial batch sends it back here
                    continue
                if self._recycle_due(attempts + pending, time.monotonic() - started):
                    handle.recycle = True  # the supervisor replaces this thread with a fresh one
                    break
                faults.check("interchange.loop")
                if self._linger(handle):
                    break  # asked to stop while lingering
                began = time.monotonic()
                claiming = self.store.claim(name, owner, self.batch)
                attempts += self._recorded(recording)
                recording, pending = None, 0
                claims = claiming.result(STORE_WAIT)
                self._claimed(began, len(claims))
                if len(claims) >= self.batch:
                    if self.helpers_on_backlog:
                        self.wakeup.notify(self._backlog)  # one helper more: it may wake the next
                elif on_backlog:
                    waiting = True
                if not claims:
                    if not on_backlog:
                        handle.idle()
                        seen = self.wakeup.wait(key, seen, IDLE_WAIT)
                    continue
                first = self.helpers_on_backlog and not on_backlog
                if first:
                    self._first_busy_since = time.monotonic()
                try:
                    outcomes = self._deliver_batch(handle, session, reader, claims)
                finally:
                    if first:
                        self._first_busy_since = None
                recording, pending = self.store.record(outcomes, owner), len(outcomes)
                handle.idle()
        except BaseException:
            if recording is not None:  # report what did commit; the first error is the story
                with contextlib.suppress(Exception):
                    self._recorded(recording)
            raise
        self._recorded(recording)

    def _linger(self, handle: ThreadHandle) -> bool:
        """Wait until `linger` has passed since the connector's last claim that found a
        partial batch, whichever of its threads made it, so that mail arriving one message
        at a time is claimed several at once (one claim, one record, one directory flush for
        several: the per-batch costs are most of what a lone message costs to deliver);
        True if a stop was asked meanwhile."""
        left = self._quiet_until - time.monotonic()
        return left > 0 and handle.wait(left)

    def _claimed(self, began: float, found: int) -> None:
        """After a claim: a partial batch makes the next claim of any thread of the
        connector wait; a full one (more is waiting) lets it come at once. A claim that
        found nothing changes nothing: its thread waits for a wake-up, and the claim that
        brings goes at once unless another thread's partial claim was just made."""
        if found >= self.batch:
            self._quiet_until = 0.0
        elif found and self.linger:
            self._quiet_until = began + self.linger

    def _recorded(self, recording: Future[list[Recorded]] | None) -> int:
        """Wait for a batch's record to commit, then report it; how many attempts it held."""
        if recording is None:
            return 0
        recorded = recording.result(STORE_WAIT)
        self._report(recorded)
        return len(recorded)

    def _count(self, item: Recorded) -> None:
        """Counters of one recorded attempt: outcome by connector, latency of deliveries."""
        connector = item.outcome.claim.connector
        self.counters.add(metrics.ATTEMPTS, connector=connector, outcome=item.state.value)
        if item.state is RecipientState.DELIVERED:
            latency = item.outcome.finished_at - item.outcome.claim.received_at
            self.counters.observe(metrics.DELIVERY_LATENCY, latency, connector=connector)

    def _recycle_due(self, attempts: int, age: float) -> bool:
        return bool(
            (self.recycle_after and attempts >= self.recycle_after)
            or (self.recycle_every and age >= self.recycle_every)
        )

    def _deliver_batch(
        self,
        handle: ThreadHandle,
        session: ConnectorSession,
        reader: QueueReader,
        claims: Sequence[Claim],
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        owner = lease_owner(self.node, handle.name, handle.generation)
        with self.in_flight.batch(owner, handle.name, session, (c.queue_id for c in claims)):
            # Claims come ordered by message: each message's recipients go in one call.
            for queue_id, group in itertools.groupby(claims, key=lambda c: c.queue_id):
                recipients = list(group)
                handle.busy(queue_id, recipients[0].address, recipients[0].connector)
                outcomes += self._attempt(owner, session, recipients, reader)
                handle.progress()
            return self._flush(session, outcomes)

    def _attempt(
        self, owner: str, session: ConnectorSession, claims: list[Claim], reader: QueueReader
    ) -> list[Outcome]:
        """One message's delivery, unless an administrator's command cancelled it first
        (its lease is revoked: the outcome says so and is not recorded)."""
        queue_id = claims[0].queue_id
        if not self.in_flight.enter(owner, queue_id):
            now = time.time()
            return [Outcome(c, Disposition.DEFERRED, CANCELLED_REPLY, now, now) for c in claims]
        try:
            return self._deliver_message(session, claims, reader.body(queue_id))
        finally:
            self.in_flight.leave(owner)

    def _deliver_message(
        self, session: ConnectorSession, claims: list[Claim], body: bytes | None
    ) -> list[Outcome]:
        started = time.time()
        try:
            if body is None:
                raise LookupError(f"body of {claims[0].queue_id} is missing from the queue")
            faults.check("interchange.deliver", claims[0].address)
            hops = received_count(body)
            if hops > self.max_received:
                raise PermanentFailure(
                    f"554 5.4.6 Too many hops: {hops} Received: headers (mail loop?)"
                )
            results = session.deliver(claims, body)
            if len(results) != len(claims):
                raise RuntimeError(f"connector gave {len(results)} results for {len(claims)}")
        except TemporaryFailure as exc:
            results = [Result(Disposition.DEFERRED, exc.reply)] * len(claims)
        except PermanentFailure as exc:
            results = [Result(Disposition.FAILED, exc.reply)] * len(claims)
        except Exception as exc:  # a bug or corrupt data: these recipients only, never the thread
            results = [self._internal_error(c, exc) for c in claims]
        finished = time.time()
        return [
            Outcome(c, r.disposition, r.reply, started, finished, r.remote_mta)
            for c, r in zip(claims, results, strict=True)
        ]

    def _internal_error(self, claim: Claim, exc: Exception) -> Result:
        self.events.emit(
            catalog.PROCESSING_FAILED,
            queue_id=claim.queue_id,
            recipient=claim.address,
            connector=claim.connector,
            failures=claim.internal_failures + 1,
            limit=self.store.max_internal_failures,
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        return Result(Disposition.INTERNAL_ERROR, f"451 4.3.0 internal error: {exc!r}")

    def _flush(self, session: ConnectorSession, outcomes: list[Outcome]) -> list[Outcome]:
        """Make deliveries durable; if that fails, nothing in the batch counts as delivered."""
        try:
            session.flush()
        except TemporaryFailure as exc:
            return [
                Outcome(o.claim, Disposition.DEFERRED, exc.reply, o.started_at, o.finished_at, None)
                if o.disposition is Disposition.DELIVERED
                else o
                for o in outcomes
            ]
        return outcomes

    def _report(self, recorded: Sequence[Recorded]) -> None:
        states = [r.state for r in recorded if not r.lease_lost]
        self.state.completed(
            delivered=states.count(RecipientState.DELIVERED),
            deferred=states.count(RecipientState.DEFERRED),
            bounced=states.count(RecipientState.BOUNCED),
        )
        for item in recorded:
            claim, outcome = item.outcome.claim, item.outcome
            if not item.lease_lost:
                self._count(item)
            if item.lease_lost:
                self.events.emit(
                    catalog.LEASE_LOST,
                    queue_id=claim.queue_id,
                    recipient=claim.address,
                    outcome=outcome.disposition.value,
                )
                continue
            common = {
                "queue_id": claim.queue_id,
                "recipient": claim.address,
                "connector": claim.connector,
                "reply": item.reply,
            }
            if item.state is RecipientState.DELIVERED:
                delays = (
                    f"{outcome.started_at - claim.received_at:.2f}/"
                    f"{outcome.finished_at - outcome.started_at:.3f}"
                )
                self.events.emit(catalog.SENT, delays=delays, attempts=claim.attempts, **common)
            elif item.state is RecipientState.DEFERRED:
                retry_in = f"{max(0.0, (item.retry_at or 0) - time.time()):.0f}s"
                self.events.emit(catalog.DEFERRED, retry_in=retry_in, **common)
            elif item.state is RecipientState.BOUNCED:
                self.events.emit(catalog.BOUNCED, **common)
            elif item.state is RecipientState.QUARANTINED:
                self.events.emit(
                    catalog.QUARANTINED,
                    queue_id=claim.queue_id,
                    recipient=claim.address,
                    failures=claim.internal_failures + 1,
                )
            if item.message_done:  # its report, if it owed one, the queue's commit reported
                self.events.emit(catalog.MESSAGE_DONE, queue_id=claim.queue_id)
