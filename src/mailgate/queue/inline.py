"""Commit in the caller's thread when there is nobody to group with.

Group commit (commit.py) shares one flush among every session waiting at once, at the price
of two thread hand-offs per message: to the commit thread and back to the session's event
loop. A receive process with a single session open has nobody to share with, and the
hand-offs are a fifth of what a message costs it (issue 14; PostgreSQL's commit_siblings
makes the same choice). `InlineWriter.try_submit` runs one operation at once in the caller's
thread, in a transaction of its own on a connection of its own, and returns only after the
WAL's fdatasync, so "done" still means "on disk": by default inside the COMMIT
(synchronous=FULL).

Where the lock is contended (another writer, the interchange delivering, held it at more
than a tenth of this writer's attempts lately, a share kept over about the last hundred:
17-20 % at one session delivering into a Maildir under a 1 ms flush, almost none while
only accepting), the
COMMIT only writes (synchronous=NORMAL) and the WAL's fdatasync follows outside the lock
(`sync_commits`, as the group commit's flush threads do), before the future is resolved:
the lock is then held for the writing alone, not for a flush that on a slow disk is most
of it, so the interchange's claims and records and the other receive process stop waiting
behind this writer's flushes (issue 14: 1.07-1.08x end to end at one session under a 1 ms
flush). Uncontended it stays inside, in SQLite's COMMIT, which costs less CPU (an A/B
measured 0.03 ms per message more outside). A flush that fails after the COMMIT fails
the operation with StoreError and event 1050, like the group commit's: the transaction is
committed but maybe not on disk, so the client, answered 4xx, sends again; a duplicate,
never a loss.

It never waits: the writer lock (the flock every mailgate writer takes, sqlite.py) is tried
once and SQLite's busy timeout is 0. When another writer holds either, or the BEGIN fails
for any reason, `try_submit` returns None and the caller queues the operation for the group
commit as before, which then meets and reports whatever is wrong (a wedged writer, a full
disk). A failure after BEGIN is the operation's own: its future fails with StoreError and
the transaction is rolled back, as in a committer's batch of one. Security: as the queue's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from mailgate.errors import StoreError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Connection
from mailgate.queue.sqlite import SqliteBackend, SqliteConnection

T = TypeVar("T")
CONTENDED = 0.1
"""The share of recent attempts that found the lock taken above which the flush is done
outside it."""
_WEIGHT = 0.01  # of each attempt in that share: about the last hundred count


class InlineWriter:
    """Runs an operation now, in the calling thread, if the writer lock is free now. One
    caller thread at a time (a receive process's event loop)."""

    def __init__(self, backend: SqliteBackend, events: EventLog) -> None:
        self._backend = backend
        self._events = events
        self._conn: SqliteConnection | None = None
        self._using = threading.Lock()  # held while an operation runs; close() waits for it
        self.done = 0  # operations committed here
        self.busy = 0  # operations handed back because the lock was taken
        self.flushed_outside = 0  # of `done`, flushed after the lock was released
        self._contention = 0.0  # moving share of attempts that found the lock taken
        self._outside = False  # the connection's mode: synchronous NORMAL, flush after
        self.last_outside = False  # the last operation committed was flushed after the lock

    def try_submit(self, name: str, op: Callable[[Connection], T]) -> Future[T] | None:
        with self._using:
            return self._run(name, op)

    def _run(self, name: str, op: Callable[[Connection], T]) -> Future[T] | None:
        conn = self._conn
        if conn is None:
            conn = self._conn = SqliteConnection(
                self._backend.path, durable=True, timeout=0.0, lock_timeout=0.0
            )
        outside = self._contention > CONTENDED
        if outside is not self._outside:  # between transactions, as SQLite requires
            conn.execute(f"PRAGMA synchronous={'NORMAL' if outside else 'FULL'}")
            self._outside = outside
        try:
            conn.begin()
        except StoreError:
            self.busy += 1
            self._contention += (1.0 - self._contention) * _WEIGHT
            return None  # another writer has the lock: the group commit waits for it
        self._contention -= self._contention * _WEIGHT
        future: Future[T] = Future()
        try:
            value = op(conn)
            conn.commit()
        except Exception as exc:
            conn.rollback()
            error = exc if isinstance(exc, StoreError) else StoreError(f"{name} failed: {exc!r}")
            self._events.emit(catalog.STORE_ERROR, operation=name, error=str(error))
            future.set_exception(error)
            return future
        if outside:
            try:
                self._backend.sync_commits()
            except (OSError, StoreError) as exc:
                self._events.emit(catalog.COMMIT_FLUSH_FAILED, batches=1, error=str(exc))
                future.set_exception(StoreError(f"flushing the committed {name} failed: {exc}"))
                return future
            self.flushed_outside += 1
        self.last_outside = outside
        self.done += 1
        future.set_result(value)
        return future

    def close(self, timeout: float = 1.0) -> None:
        """Close the connection, once no operation runs (at most `timeout` seconds: one stuck
        on the disk keeps it). At a stop, before the clean-stop record (cleanstop.py): the
        last connection to a WAL file to close checkpoints it, which changes the file."""
        if not self._using.acquire(timeout=timeout):
            return
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._using.release()
