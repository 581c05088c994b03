"""Commit in the caller's thread when there is nobody to group with.

Group commit (commit.py) shares one flush among every session waiting at once, at the price
of two thread hand-offs per message: to the commit thread and back to the session's event
loop. A receive process with a single session open has nobody to share with, and the
hand-offs are a fifth of what a message costs it (issue 14; PostgreSQL's commit_siblings
makes the same choice). `InlineWriter.try_submit` runs one operation at once in the caller's
thread, in a transaction of its own on a connection of its own whose COMMIT returns only
after the WAL's fdatasync (synchronous=FULL), so "done" still means "on disk".

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

    def try_submit(self, name: str, op: Callable[[Connection], T]) -> Future[T] | None:
        with self._using:
            return self._run(name, op)

    def _run(self, name: str, op: Callable[[Connection], T]) -> Future[T] | None:
        conn = self._conn
        if conn is None:
            conn = self._conn = SqliteConnection(
                self._backend.path, durable=True, timeout=0.0, lock_timeout=0.0
            )
        try:
            conn.begin()
        except StoreError:
            self.busy += 1
            return None  # another writer has the lock: the group commit waits for it
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
