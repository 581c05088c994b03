"""Two flush threads of one syncer (`[queue] commit_flush_threads`, issue 14.2): a batch
committed while the previous batch's flush is still running is flushed at once by the other
thread, and settled when that flush ends, before the slow one does. Regression: with one
flush thread it waited for the slow flush to end, then for its own (on a disk whose flushes
are slow and independent, twice the wait). On a real SQLite file; only the first flush is
held, at a gate the test opens."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.config import parse_config
from mailgate.observe.events import EventLog
from mailgate.queue import ops
from mailgate.queue.commit import Committer
from mailgate.queue.commit_sync import CommitSyncer
from mailgate.queue.sqlite import SqliteBackend
from mailgate.service.processes import single_process
from mailgate.supervise.handle import ThreadHandle
from tests.integration.test_commit_overlap import _committed
from tests.integration.test_queue import message
from tests.support.process import wait_for


class FirstFlushHeld(SqliteBackend):
    """A real SQLite store whose first flush waits for `gate`; later ones run at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, lock_timeout=None)
        self.gate = threading.Event()
        self.first_flushing = threading.Event()
        self.flushed_in: list[str] = []
        self._calls = 0
        self._lock = threading.Lock()

    def sync_commits(self) -> None:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if first:
            self.first_flushing.set()
            self.gate.wait(10)
        super().sync_commits()
        self.flushed_in.append(threading.current_thread().name)


@dataclass
class Run:
    backend: FirstFlushHeld
    first: Future[None]
    second: Future[None]
    stop: Callable[[], None]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[[int], Run]]:
    made: list[Run] = []

    def start(flushers: int) -> Run:
        made.append(_run(tmp_path, flushers))
        return made[-1]

    yield start
    for each in made:
        each.stop()


def _run(tmp_path: Path, flushers: int) -> Run:
    backend = FirstFlushHeld(tmp_path / "queue.db")
    backend.initialize()
    events = EventLog()
    syncer = CommitSyncer(backend, events)
    committer = Committer(backend, events, syncer=syncer)
    committer.overlap_hold = 60.0  # every batch to the syncer: the case under load
    committer._overlapped = time.monotonic()
    handles, threads = [], []
    names = ["commit", *(["commit-sync", "commit-sync-2"][:flushers])]
    for name in names:
        handle = ThreadHandle(name, "commit", None)
        body = committer.run if name == "commit" else syncer.run
        args = (lambda h=handle: h.stopping, handle.progress)
        handles.append(handle)
        threads.append(threading.Thread(target=body, args=args, name=name, daemon=True))
    for thread in threads:
        thread.start()

    def insert(address: str) -> Future[None]:
        return committer.submit("insert", lambda c: ops.insert_message(c, message(address)))

    def stop() -> None:
        backend.gate.set()
        for handle in handles:
            handle.stop_event.set()
        committer.wake()
        syncer.wake()
        syncer.wake()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    first = insert("a@example.test")
    assert backend.first_flushing.wait(10), "the first batch reached its (held) flush"
    second = insert("b@example.test")
    wait_for(lambda: _committed(backend) == 2, 10, what="the second batch written")
    return Run(backend, first, second, stop)


def test_a_batch_written_during_a_slow_flush_is_flushed_at_once_by_the_other_thread(
    run: Callable[[int], Run],
) -> None:
    held = run(2)
    assert held.second.result(10) is None, "flushed and settled while the first flush is held"
    assert not held.first.done(), "the first batch waits for its own flush"
    held.backend.gate.set()
    assert held.first.result(10) is None
    assert sorted(held.backend.flushed_in) == ["commit-sync", "commit-sync-2"]


def test_with_one_flush_thread_the_second_batch_waits_for_the_first_flush(
    run: Callable[[int], Run],
) -> None:
    held = run(1)  # committed, and waiting behind the held flush
    assert not held.second.done() and not held.first.done()
    held.backend.gate.set()
    assert held.first.result(10) is None and held.second.result(10) is None


@pytest.mark.parametrize(
    ("count", "names"), [(2, ["commit-sync", "commit-sync-2"]), (1, ["commit-sync"])]
)
def test_a_service_runs_its_flush_threads_supervised(
    tmp_path: Path, count: int, names: list[str]
) -> None:
    config = parse_config(
        {
            "service": {"data_dir": str(tmp_path), "hostname": "mx.test"},
            "log": {"stderr": False},
            "queue": {"commit_flush_threads": count},
        },
        {"smtp.listen": "127.0.0.1:0"},
    )
    service = single_process(config, EventLog())
    service.start()
    try:
        wait_for(
            lambda: {"commit", *names} <= {v.name for v in service.supervisor.statistics().threads},
            10, what=f"the flush threads {names}",
        )  # fmt: skip
        found = {v.name for v in service.supervisor.statistics().threads}
        assert sorted(n for n in found if n.startswith("commit-sync")) == names
    finally:
        assert service.stop() == []


def test_both_flush_threads_end_at_once_when_the_committer_has(tmp_path: Path) -> None:
    """Regression: the committer's end woke one flush thread; the other slept out its poll
    (0.5 s), and every stop of every receiving process took that much longer. Here the poll
    is a minute: only the wake-up each ending thread passes on can end the other."""
    backend = SqliteBackend(tmp_path / "queue.db", lock_timeout=None)
    backend.initialize()
    syncer = CommitSyncer(backend, EventLog())
    syncer.poll = 60.0
    syncer.writer_running(True)
    stop = threading.Event()
    threads = [
        threading.Thread(target=syncer.run, args=(stop.is_set, lambda: None), daemon=True)
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    stop.set()
    syncer.writer_running(False)  # the committer ended: one wake-up
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a flush thread slept on after the committer ended"
