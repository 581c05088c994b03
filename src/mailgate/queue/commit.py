"""Group commit: one writer thread applies queued write operations in shared transactions.

Callers submit an operation and get a Future. The commit thread takes the first
waiting operation, then every other one already waiting (up to a batch limit),
runs each inside its own savepoint of one transaction, and COMMITs once: every
caller in the batch shares a single fsync. Futures are resolved only after the
COMMIT returned, so "done" always means "on disk". While one batch is being
synced the next one gathers, which is what makes durability cheap under load.
With a `syncer` (commit_sync.py; a store that can flush apart from writing), the
COMMIT returns once written and the syncer resolves the futures after its flush,
so the next batch is built and written while the previous one is flushed; at low load
(nothing waiting, the syncer drained, no write that waited for or overlapped a flush in
the last second) a batch is flushed and settled in this thread instead, which spares a
thread hand-off per commit: most of a one-session reply's latency after the fsync itself.
A batch of one operation runs without a savepoint (SQLite): its failure rolls the
transaction back, which is all a savepoint would have undone.
On PostgreSQL the whole batch, BEGIN to COMMIT, is sent in one go (pipeline mode,
pg_pipeline.py): a batch of accepted messages is one round trip. Its errors come back
only at the end, without saying whose, so a batch in which a statement failed is
rolled back and run again the ordinary way, each statement's result awaited.

A failing operation fails only its own future (pipelined or not); a failing COMMIT,
or a connection lost mid-batch, fails the whole batch with StoreError (the callers
answer 4xx) and the thread reopens its connection: a batch is run again only when the
server said a statement failed, never when a COMMIT sent may have been done.
Operations waiting when the thread restarts stay queued for the new one; once it has
failed for good (`fail_waiting`, from the supervisor) they, and any submitted later, fail
at once with StoreError: a caller blocked on a future no thread will resolve would hold
the service's stop until its deadline.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from mailgate.errors import StoreError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Backend, Connection, Pipelining
from mailgate.queue.commit_sync import CommitSyncer, Result, settle
from mailgate.supervise import faults

T = TypeVar("T")
Op = Callable[[Connection], Any]


@dataclass(slots=True)
class _Job:
    name: str
    op: Op
    future: Future[Any] = field(default_factory=Future)


@dataclass(frozen=True, slots=True)
class CommitterStats:
    batches: int
    operations: int
    largest_batch: int
    waiting: int
    last_commit_seconds: float
    replayed: int = 0  # pipelined batches run again one statement at a time (one failed)


_PIPELINING: dict[type, bool] = {}


def _pipelining(conn: Connection) -> bool:
    """isinstance(conn, Pipelining), known once per connection class: a runtime-checkable
    Protocol's isinstance walks its members each time (a tenth of a commit thread's time)."""
    kind = type(conn)
    known = _PIPELINING.get(kind)
    if known is None:
        known = _PIPELINING[kind] = isinstance(conn, Pipelining)
    return known


class Committer:
    """The group-commit writer. `run` is the body of a supervised thread."""

    overlap_hold = 1.0  # seconds of hand-offs to the syncer after the last sign of load

    def __init__(
        self,
        backend: Backend,
        events: EventLog,
        *,
        max_batch: int = 512,
        syncer: CommitSyncer | None = None,
    ) -> None:
        self._backend = backend
        self._syncer = syncer
        self._events = events
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._batches = 0
        self._operations = 0
        self._largest = 0
        self._last_commit = 0.0
        self._replayed = 0
        self._overlapped = -float("inf")  # when a write last overlapped a flush, or waited for one
        self._failed: StoreError | None = None  # set once the thread has failed for good

    def submit(self, name: str, op: Callable[[Connection], T]) -> Future[T]:
        job = _Job(name, op)
        self._jobs.put(job)
        if self._failed is not None:  # after the put: a job put while failing is not missed
            self._fail_queued(self._failed)
        return job.future

    def fail_waiting(self, reason: str = "the commit thread has failed") -> None:
        """Fail every operation waiting, and every one submitted from now on, with
        StoreError (the callers answer 4xx or retry later): no thread will run them."""
        self._failed = StoreError(reason)
        self._fail_queued(self._failed)

    def _fail_queued(self, error: StoreError) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def wake(self) -> None:
        """Unblock the thread so it notices a stop request."""
        self._jobs.put(None)

    def statistics(self) -> CommitterStats:
        return CommitterStats(
            self._batches,
            self._operations,
            self._largest,
            self._jobs.qsize(),
            self._last_commit,
            self._replayed,
        )

    def run(
        self,
        stopping: Callable[[], bool],
        progress: Callable[[], None],
        busy: Callable[[], None] = lambda: None,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        """The commit loop. It is `busy` from taking a batch until its COMMIT returned, so a
        committer blocked with callers waiting (on the writer lock held by a wedged process,
        on a slow fsync) is reported as stalled; waiting for work is `idle` (Q151669)."""
        faults.check("commit.loop")  # tests: a committer that dies at every start
        conn: Connection | None = None
        syncer = self._syncer
        if syncer is not None:
            syncer.writer_running(True)
        try:
            while True:
                batch = self._gather(stopping)
                if batch is None:
                    return
                if not batch:
                    continue
                busy()  # until flushed, when this thread flushes: a stuck flush is a stall
                if conn is None:
                    conn = self._connect()
                if not self._apply(conn, batch):
                    conn.close()
                    conn = None
                progress()
                idle()
        finally:
            if conn is not None:
                conn.close()
            if syncer is not None:
                syncer.writer_running(False)

    def _connect(self) -> Connection:
        if self._syncer is not None:  # its COMMIT writes; the syncer flushes
            return self._syncer.backend.connect_deferred()
        return self._backend.connect()

    def _gather(self, stopping: Callable[[], bool]) -> list[_Job] | None:
        try:
            first = self._jobs.get(timeout=0.5)
        except queue.Empty:
            return None if stopping() else []
        batch = [first] if first is not None else []
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                batch.append(job)
        if not batch and stopping():
            return None
        return batch

    def _apply(self, conn: Connection, batch: list[_Job]) -> bool:
        """Run a batch in one transaction; False if the connection should be reopened."""
        started = time.monotonic()
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
        try:
            results = self._transaction(conn, jobs)
        except Exception as exc:
            conn.rollback()
            error = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc}")
            self._events.emit(catalog.STORE_ERROR, operation="commit", error=str(exc))
            for job in jobs:  # a BEGIN that failed fails them all at once, too
                job.future.set_exception(error)
            return False
        self._last_commit = time.monotonic() - started
        self._batches += 1
        self._operations += len(batch)
        self._largest = max(self._largest, len(batch))
        syncer = self._syncer
        if syncer is None:
            settle(results)
        elif self._flush_here(syncer):
            syncer.flush_here(results, self._waited)  # nothing to overlap with: no hand-off
        else:
            syncer.put(results)  # settled once flushed, while the next batch is written
        return True

    def _waited(self) -> None:
        """After a flush in this thread, before its callers are told: a write that came
        meanwhile waited for it, so the overlap is worth its hand-off from now."""
        if not self._jobs.empty():
            self._overlapped = time.monotonic()

    def _flush_here(self, syncer: CommitSyncer) -> bool:
        """Whether to flush a batch just written in this thread: nothing waits behind it
        nor in the syncer, and no write had to wait for a flush, or overlapped one, in the
        last `overlap_hold` seconds (the load of several sessions comes and goes between
        two batches; the overlap is worth its hand-off while it lasts, most on a disk whose
        flush is slow)."""
        if not syncer.drained():  # a flush still runs: this write overlapped it
            self._overlapped = time.monotonic()
            return False
        if not self._jobs.empty():
            return False
        return time.monotonic() - self._overlapped > self.overlap_hold

    def _transaction(self, conn: Connection, jobs: list[_Job]) -> list[Result]:
        """The batch committed, each job's value or its own failure. Where the store can
        (PostgreSQL), the whole batch goes at once: one round trip when no operation reads
        a result. A statement that fails there is known only as "one did", the transaction
        having done nothing: it is rolled back and run again with each statement's result
        awaited, so the failing operation fails alone (rare: a duplicate, a bug)."""
        if _pipelining(conn):
            pipe = cast(Pipelining, conn)
            pipe.begin_pipelined()
            try:
                return self._savepoints(conn, jobs)
            except Exception:
                if not pipe.pipeline_failed():
                    raise  # a lost connection, a failed COMMIT: the batch fails
                conn.rollback()
                self._replayed += 1
        conn.begin()
        return self._savepoints(conn, jobs)

    def _savepoints(self, conn: Connection, jobs: list[_Job]) -> list[Result]:
        """Each job in its own savepoint, then COMMIT (raises if the batch must fail). A job
        alone (the usual batch at low load) needs no savepoint: its failure rolls the
        transaction back instead, two statements fewer per commit."""
        results: list[Result] = []
        alone = len(jobs) == 1 and not _pipelining(conn)
        for job in jobs:
            if not alone:
                conn.execute("SAVEPOINT op")
            try:
                value = job.op(conn)
            except Exception as exc:  # one operation's failure stays its own
                if _pipelining(conn) and cast(Pipelining, conn).pipeline_failed():
                    raise  # whose statement failed is not known: run the batch again
                if alone:
                    conn.rollback()
                else:
                    conn.execute("ROLLBACK TO SAVEPOINT op")
                    conn.execute("RELEASE SAVEPOINT op")
                if not isinstance(exc, StoreError):
                    exc = StoreError(f"{job.name} failed: {exc!r}")
                self._events.emit(catalog.STORE_ERROR, operation=job.name, error=str(exc))
                results.append((job.future, None, exc))
                if alone:
                    return results  # rolled back: nothing to commit
                continue
            if not alone:
                conn.execute("RELEASE SAVEPOINT op")
            results.append((job.future, value, None))
        conn.commit()
        return results


class DirectWriter:
    """Runs each operation at once in its own transaction, for tools with no service running."""

    def __init__(self, backend: Backend) -> None:
        self._conn = backend.connect()

    def submit(self, name: str, op: Callable[[Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        try:
            self._conn.begin()
            value = op(self._conn)
            self._conn.commit()
        except Exception as exc:
            self._conn.rollback()
            future.set_exception(exc)
        else:
            future.set_result(value)
        return future

    def close(self) -> None:
        self._conn.close()
