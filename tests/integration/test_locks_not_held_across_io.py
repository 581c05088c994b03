"""Q151669 (an exception left a lock held; every thread blocked): DESIGN §5 row 1 says
locks are taken only in `with` and never held across I/O. Each test blocks the I/O a
lock used to span, for real (a pipe nobody reads, a database locked by another
connection, a FIFO nobody writes), and checks that the lock is free meanwhile, so no
other thread queues behind someone else's I/O."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.master.processes import WorkerProcess, WorkerSpec
from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog
from mailgate.observe.eventstore import store_path
from mailgate.observe.eventwriter import attach_event_store
from mailgate.security.passwords import Credentials, hash_password
from mailgate.supervise.budget import RestartBudget
from tests.support.eventstore import Running
from tests.support.process import wait_for


@pytest.fixture
def deaf_worker() -> Iterator[WorkerProcess]:
    """A worker process that never reads its stdin (a wedged worker)."""
    worker = WorkerProcess(WorkerSpec("receive", "receive-1"), RestartBudget(5, 60.0))
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    worker.started(proc)
    try:
        yield worker
    finally:
        proc.kill()
        proc.wait(10)


def test_a_command_to_a_worker_that_does_not_read_times_out_and_blocks_no_reply(
    deaf_worker: WorkerProcess,
) -> None:
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            deaf_worker.call("status", {"pad": "x" * 300_000}, timeout=1.0)  # > a pipe's buffer
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    began = time.monotonic()
    caller.start()
    caller.join(5)
    assert outcome and isinstance(outcome[0], TimeoutError), outcome or "call() still blocked"
    assert time.monotonic() - began < 3.0
    # The channel thread's path (a reply arriving) must never wait behind a write.
    replier = threading.Thread(target=deaf_worker.reply, args=({"id": 1, "ok": True},))
    replier.start()
    replier.join(2)
    assert not replier.is_alive(), "reply() waited behind a blocked write"
    # The next command is framed as a line of its own: the unsent rest went first.
    with pytest.raises(TimeoutError):
        deaf_worker.call("status", {}, timeout=0.2)


@contextlib.contextmanager
def locked_database(path: Path) -> Iterator[None]:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_event_store_writer_does_not_hold_its_lock_while_writing(tmp_path: Path) -> None:
    log = EventLog({c: Level.MAXIMUM for c in Category})
    writer = attach_event_store(log, tmp_path, 1000)
    running = Running(writer).start()
    try:
        log.emit(catalog.SERVICE_STOPPED, reason="first")
        wait_for(lambda: writer.written == 1, 5, what="the store created")
        with locked_database(store_path(tmp_path)):
            log.emit(catalog.SERVICE_STOPPED, reason="while the store is locked")
            writer.wake()
            wait_for(lambda: not writer.sink.queue, 5, what="the writer took the event")
            # It is now waiting on SQLite's lock (up to its 10 s busy timeout).
            wait_for(lambda: not writer._lock.locked(), 2, what="its lock free during the I/O")
        wait_for(lambda: writer.written == 2, 15, what="written once the store is free")
    finally:
        running.stop(timeout=20)
        log.close()


def test_credentials_are_read_outside_the_lock(tmp_path: Path) -> None:
    fifo = tmp_path / "users"
    os.mkfifo(fifo)  # a read blocks until someone writes: a file on a hung disk
    credentials = Credentials(fifo)
    found: list[dict[str, str]] = []
    reader = threading.Thread(target=lambda: found.append(credentials.users()), daemon=True)
    reader.start()
    # A writer can open the FIFO once the reader is inside its open(): then it is in the I/O.
    fd = wait_for(lambda: _open_writer(fifo), 5, what="the reader blocked on the file")
    try:
        assert not credentials._lock.locked(), "the lock is held across the file read"
        os.write(fd, f"alice:{hash_password('pw')}\n".encode())
    finally:
        os.close(fd)
    reader.join(5)
    assert found and set(found[0]) == {"alice"}


def _open_writer(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None
