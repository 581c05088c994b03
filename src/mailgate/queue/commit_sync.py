"""The flush half of group commit: committed batches are made durable while the next is written.

A store that can (SQLite: `connect_deferred` and `sync_commits`) lets the committer's
COMMIT return once its transaction is written, before the disk has it. The batch then
waits here, in the `commit-sync` thread, for one flush (fdatasync of the WAL) that
covers every batch committed before it began; only then are the batch's futures
resolved, so "done" still means "on disk" and a 250 still follows the flush. Meanwhile
the writer gathers, builds and writes the next batch: on a disk whose flush is slow the
flushes no longer hold the one writer lock, and the receive processes' flushes overlap
instead of queueing behind each other (issue 14). Several flush threads may share one
syncer (`[queue] commit_flush_threads`, `commit-sync`, `commit-sync-2`): a batch written
while one flush runs is taken by an idle thread and flushed at once, instead of waiting
for that flush to end and then for its own. Each batch is still settled only after a
flush that began after its COMMIT returned (it is put here only then), whichever thread
ran it; batches may be settled out of order, each once.

At low load the hand-off is skipped: a committer whose batch is written while nothing
else waits (no job queued behind it, no batch here unflushed) flushes and settles in its
own thread (`flush_here`), which spares a thread wake-up per commit, most of a
one-session reply's latency after the fsync itself. The flush then covers the same
commits and fails the same way; a job that arrives meanwhile waits for that flush before
it is written, which costs it the write's time, not a flush's (the flush is outside
the writer lock either way).

Failure: a flush that fails (EIO, ENOSPC) fails every batch it was to cover with
StoreError, and event 1050 says so. Those transactions are committed but maybe not on
disk: the callers answer 4xx and the clients send again, which may duplicate a
message, never lose one. Batches waiting when this thread restarts stay queued for the
new one; it ends, when asked, only once the writer has ended and nothing waits. Once it
has failed for good (`fail_waiting`, from the supervisor), the batches waiting and any
put later fail the same way at once, instead of holding their callers until the stop's
deadline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mailgate.errors import StoreError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Connection

# One operation of a committed batch: its future, and its value or its own failure.
Result = tuple[Future[Any], Any, BaseException | None]


@runtime_checkable
class DeferredSync(Protocol):
    """A store whose commits can be flushed apart from writing them."""

    def connect_deferred(self) -> Connection:
        """A writer connection whose COMMIT does not wait for the disk."""
        ...

    def sync_commits(self) -> None:
        """Flush: every COMMIT returned before this call is on disk when it returns."""
        ...


class _Settling(threading.local):
    later: list[Callable[[], None]] | None = None  # while callers are told
    running: list[Callable[[], None]] | None = None  # while their effects run


_SETTLING = _Settling()


def settle(results: list[Result]) -> None:
    """Tell each caller its outcome (only once its batch is durable), then run the
    effects their futures' callbacks left for `after_settled`: every caller of a batch is
    woken before any wake-up or event of the batch is sent."""
    with effects_kept() as later:
        for future, value, failure in results:
            if failure is None:
                future.set_result(value)
            else:
                future.set_exception(failure)
    run_effects(later)


@contextmanager
def effects_kept() -> Iterator[list[Callable[[], None]]]:
    """Within it, `after_settled` keeps the effects in the list it yields instead of
    running them; `run_effects` runs them later. Not reentrant: one batch per thread."""
    later: list[Callable[[], None]] = []
    _SETTLING.later = later
    try:
        yield later
    finally:
        _SETTLING.later = None


def run_effects(later: list[Callable[[], None]]) -> None:
    """Run the effects `effects_kept` kept, as one batch (see `batch_effects`)."""
    if not later:
        return
    _SETTLING.running = later
    try:
        for effect in later:  # effects may add more, to run after them all (after_effects)
            effect()
    finally:
        _SETTLING.running = None


def after_settled(effect: Callable[[], None]) -> None:
    """Run `effect` (which must not raise) once the batch being settled in this thread has
    every caller told; at once if no batch is (a DirectWriter resolved the future)."""
    later = _SETTLING.later
    if later is None:
        effect()
    else:
        later.append(effect)


def batch_effects() -> list[Callable[[], None]] | None:
    """From an effect of a batch: the batch's effects still to run, to append one that
    must run after them all (which must not raise), to do once what each asked for (one
    wake-up per connector per batch); a new list for each batch. None if no batch's
    effects are running in this thread: the caller does it now."""
    return _SETTLING.running


@dataclass(frozen=True, slots=True)
class SyncerStats:
    flushes: int
    batches: int
    largest_flush: int  # most batches one flush made durable
    waiting: int


class CommitSyncer:
    """Flushes committed batches; `run` is the body of the supervised `commit-sync` thread."""

    poll = 0.5  # seconds a flush thread waits for a batch before it looks at its stop flag

    def __init__(self, backend: DeferredSync, events: EventLog) -> None:
        self.backend = backend
        self._events = events
        self._pending: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
        self._unsettled = 0  # batches put and not yet settled (written by two threads)
        self._writers = 0  # committer loops running: the last batches may still come
        self._lock = threading.Lock()
        self._flushes = 0
        self._batches = 0
        self._largest = 0
        self._failed: StoreError | None = None  # set once the thread has failed for good

    def writer_running(self, running: bool) -> None:
        with self._lock:
            self._writers += 1 if running else -1
        if not running:
            self._pending.put(None)  # a syncer asked to stop may go once it is drained

    def put(self, results: list[Result]) -> None:
        """A batch whose COMMIT returned: settle it once it is on disk."""
        with self._lock:
            self._unsettled += 1
        self._pending.put(results)
        if self._failed is not None:  # after the put: a batch put while failing is not missed
            self._fail_pending(self._failed)

    def fail_waiting(self, reason: str = "the commit flush thread has failed") -> None:
        """Fail every batch waiting for its flush, and every one put from now on, with
        StoreError: committed, maybe not on disk, and no thread will flush them."""
        self._failed = StoreError(reason)
        self._fail_pending(self._failed)

    def _fail_pending(self, error: StoreError) -> None:
        while True:
            try:
                results = self._pending.get_nowait()
            except queue.Empty:
                return
            if results is None:
                continue
            with self._lock:
                self._unsettled -= 1
            settle([(future, None, error) for future, _, _ in results])

    def drained(self) -> bool:
        """True if no batch put here waits for its flush (the writer may flush its own)."""
        return self._unsettled == 0

    def flush_here(self, results: list[Result], flushed: Callable[[], None]) -> None:
        """Flush and settle a batch whose COMMIT returned, in the calling thread (the
        writer's, when `drained`): the same flush and the same failure (event 1050) as in
        the `commit-sync` thread, without waking it. `flushed` is called once the flush
        ended, before any caller is told (who then may write again at once)."""
        self._flush([results], counted=False, flushed=flushed)

    def wake(self) -> None:
        self._pending.put(None)

    def statistics(self) -> SyncerStats:
        return SyncerStats(self._flushes, self._batches, self._largest, self._pending.qsize())

    def run(
        self,
        stopping: Callable[[], bool],
        progress: Callable[[], None],
        busy: Callable[[], None] = lambda: None,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        """Flush and settle until asked to stop, the writer has ended and nothing waits."""
        while True:
            batches = self._gather()
            if not batches:
                if stopping() and self._writers == 0 and self._pending.empty():
                    self._pending.put(None)  # the next flush thread, asleep in its get, may go too
                    return
                continue
            busy()  # a flush stuck on the disk is a stall, with callers waiting
            self._flush(batches)
            progress()
            idle()

    def _gather(self) -> list[list[Result]]:
        try:
            first = self._pending.get(timeout=self.poll)
        except queue.Empty:
            return []
        batches = [first] if first is not None else []
        while True:
            try:
                more = self._pending.get_nowait()
            except queue.Empty:
                return batches
            if more is not None:
                batches.append(more)

    def _flush(
        self,
        batches: list[list[Result]],
        *,
        counted: bool = True,
        flushed: Callable[[], None] = lambda: None,
    ) -> None:
        """Flush, then settle `batches`; `counted`: they were put here (`_unsettled`).

        They count as unsettled until their flush ended, not until their callers were
        told: a caller told may send its next message at once, and the writer must not
        take the telling that follows for a flush still running (it would hand off
        again and again at one session, each batch waiting on this thread's wake-up)."""
        failure: OSError | StoreError | None = None
        try:
            self.backend.sync_commits()
            with self._lock:  # several flush threads may count at once
                self._flushes += 1
                self._batches += len(batches)
                self._largest = max(self._largest, len(batches))
        except (OSError, StoreError) as exc:
            failure = exc
        finally:
            if counted:
                with self._lock:
                    self._unsettled -= len(batches)
        flushed()
        if failure is not None:
            error = StoreError(f"flushing {len(batches)} committed batches failed: {failure}")
            self._events.emit(catalog.COMMIT_FLUSH_FAILED, batches=len(batches), error=str(failure))
            settle([(future, None, error) for results in batches for future, _, _ in results])
            return
        settle([result for results in batches for result in results])  # as one
