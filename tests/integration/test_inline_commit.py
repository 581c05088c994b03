"""queue/inline.py: an operation committed in the caller's thread when the writer lock is free
this instant, durable when it returns; handed back (None, nothing written, no wait) when
another writer holds mailgate's writer lock or SQLite's own; a failing operation rolled back;
flushed outside the lock while the lock is contended, a failure of that flush the
operation's own (event 1050)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog
from mailgate.queue import ops
from mailgate.queue.backend import Connection
from mailgate.queue.inline import CONTENDED, InlineWriter
from mailgate.queue.sqlite import SqliteBackend
from tests.support.stage import Seen


def event_log(seen: Seen) -> EventLog:
    events = EventLog({c: Level.MAXIMUM for c in Category})
    events.add_sink(seen)
    return events


def message(to: str) -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="s@example.org",
        recipients=(NewRecipient(to, "postoffice"),),
        body=b"Subject: inline\r\n\r\nhello\r\n",
        received_at=now,
        client="test",
    )


@pytest.fixture
def backend(tmp_path: Path) -> SqliteBackend:
    found = SqliteBackend(tmp_path / "queue.db")
    found.initialize()
    return found


def count(backend: SqliteBackend) -> int:
    db = sqlite3.connect(backend.path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def insert(m: NewMessage) -> Callable[[Connection], object]:
    return lambda conn: ops.insert_message(conn, m, None)


def test_commits_now_and_durably(backend: SqliteBackend) -> None:
    seen = Seen()
    writer = InlineWriter(backend, event_log(seen))
    future = writer.try_submit("enqueue", insert(message("a@x.test")))
    assert future is not None and future.done() and future.exception() is None
    assert count(backend) == 1, "visible to another connection once it returned"
    assert writer._conn is not None
    # synchronous=FULL: SQLite's COMMIT returned only after the WAL's fdatasync.
    assert writer._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert writer.done == 1 and writer.busy == 0


def test_hands_back_when_a_mailgate_writer_holds_the_lock(backend: SqliteBackend) -> None:
    holder = backend.connect()
    holder.begin()  # the flock and SQLite's write lock, as a committer mid-batch
    writer = InlineWriter(backend, event_log(Seen()))
    try:
        assert writer.try_submit("enqueue", insert(message("a@x.test"))) is None
        assert writer.busy == 1
    finally:
        holder.rollback()
        holder.close()
    assert count(backend) == 0
    again = writer.try_submit("enqueue", insert(message("b@x.test")))
    assert again is not None and again.exception() is None and count(backend) == 1


def test_hands_back_at_once_when_a_foreign_writer_holds_sqlites_lock(
    backend: SqliteBackend,
) -> None:
    foreign = sqlite3.connect(backend.path, isolation_level=None)  # the sqlite3 shell: no flock
    foreign.execute("BEGIN IMMEDIATE")
    writer = InlineWriter(backend, event_log(Seen()))
    started = time.monotonic()
    try:
        assert writer.try_submit("enqueue", insert(message("a@x.test"))) is None
    finally:
        foreign.rollback()
        foreign.close()
    # SQLite's busy timeout is 0 here: no waiting for the 30 s a committer would.
    assert time.monotonic() - started < 5
    assert writer.try_submit("enqueue", insert(message("b@x.test"))) is not None


def test_a_failing_operation_is_rolled_back_and_its_own(backend: SqliteBackend) -> None:
    seen = Seen()
    writer = InlineWriter(backend, event_log(seen))

    def half(conn: Connection) -> None:
        ops.insert_message(conn, message("half@x.test"), None)
        raise RuntimeError("after a write")

    failed = writer.try_submit("enqueue", half)
    assert failed is not None
    with pytest.raises(StoreError, match="after a write"):
        failed.result(0)
    assert count(backend) == 0
    assert [f["operation"] for f in seen.of(catalog.STORE_ERROR)] == ["enqueue"]
    ok = writer.try_submit("enqueue", insert(message("a@x.test")))
    assert ok is not None and ok.exception() is None and count(backend) == 1


class FlakyFlush(SqliteBackend):
    """A real SQLite store whose next flush outside a COMMIT can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.flushes = 0
        self.fail_next = False

    def sync_commits(self) -> None:
        self.flushes += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        super().sync_commits()


def contend(backend: SqliteBackend, writer: InlineWriter) -> None:
    """Other writers hold the lock at every attempt until the writer counts it contended."""
    holder = backend.connect()
    holder.begin()
    try:
        for n in range(1000):
            assert writer.try_submit("enqueue", insert(message(f"x{n}@x.test"))) is None
            if writer._contention > CONTENDED:
                return
        raise AssertionError("never counted as contended")
    finally:
        holder.rollback()
        holder.close()


def test_a_contended_lock_moves_the_flush_outside_it_and_back(tmp_path: Path) -> None:
    backend = FlakyFlush(tmp_path / "queue.db")
    backend.initialize()
    writer = InlineWriter(backend, event_log(Seen()))
    first = writer.try_submit("enqueue", insert(message("a@x.test")))
    assert first is not None and first.exception() is None
    assert (backend.flushes, writer.flushed_outside) == (0, 0), "uncontended: SQLite's COMMIT"
    contend(backend, writer)
    second = writer.try_submit("enqueue", insert(message("b@x.test")))
    assert second is not None and second.exception() is None and count(backend) == 2
    assert writer._conn is not None
    # synchronous=NORMAL: the COMMIT wrote, and the flush came after the lock was released
    assert writer._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert (backend.flushes, writer.flushed_outside) == (1, 1)
    for n in range(50):  # the lock free again at every attempt: back inside the COMMIT
        done = writer.try_submit("enqueue", insert(message(f"c{n}@x.test")))
        assert done is not None and done.exception() is None
    assert writer._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert backend.flushes == writer.flushed_outside < 50


def test_a_flush_that_fails_after_the_commit_fails_the_operation_with_1050(
    tmp_path: Path,
) -> None:
    backend = FlakyFlush(tmp_path / "queue.db")
    backend.initialize()
    seen = Seen()
    writer = InlineWriter(backend, event_log(seen))
    contend(backend, writer)
    backend.fail_next = True
    failed = writer.try_submit("enqueue", insert(message("a@x.test")))
    assert failed is not None
    with pytest.raises(StoreError, match=r"flushing the committed enqueue failed: .*Input/output"):
        failed.result(0)
    [event] = seen.of(catalog.COMMIT_FLUSH_FAILED)
    assert event["batches"] == 1 and "Input/output" in event["error"]
    assert count(backend) == 1, "committed, maybe not on disk: the client sends again"
    assert writer.done == 0 and writer.flushed_outside == 0
    again = writer.try_submit("enqueue", insert(message("b@x.test")))
    assert again is not None and again.exception() is None and count(backend) == 2
