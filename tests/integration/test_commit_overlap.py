"""Group commits overlap their flushes (queue/commit_sync.py, issue 14.2a), on a real SQLite
file: a batch is settled only after the flush that follows its COMMIT, and the next batch is
written while that flush is still running. Regression: the flush ran inside COMMIT, under
the one writer lock, so on a slow-flush disk every commit of every process waited for the
previous one's flush."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.observe.events import EventLog, HumanFormatter
from mailgate.queue.commit import Committer
from mailgate.queue.commit_sync import CommitSyncer
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from mailgate.supervise.handle import ThreadHandle
from tests.integration.test_queue import message
from tests.support.process import wait_for
from tests.unit.test_events import ListHandler


class GatedBackend(SqliteBackend):
    """A real SQLite store whose flushes wait for the test to let them through."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, lock_timeout=None)
        self.gate = threading.Event()
        self.flushing = threading.Event()
        self.flushes = 0
        self.fail_next = False

    def sync_commits(self) -> None:
        self.flushing.set()
        self.gate.wait(10)
        self.flushes += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        super().sync_commits()


@dataclass
class Pipeline:
    backend: GatedBackend
    store: QueueStore
    events: EventLog
    sink: ListHandler
    handles: list[ThreadHandle] = field(default_factory=list)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    backend = GatedBackend(tmp_path / "queue.db")
    backend.initialize()
    sink = ListHandler()
    sink.setFormatter(HumanFormatter())
    events = EventLog()
    events.add_sink(sink)
    syncer = CommitSyncer(backend, events)
    committer = Committer(backend, events, syncer=syncer)
    found = Pipeline(backend, QueueStore(backend, committer), events, sink)
    threads = []
    for name, body in (("commit", committer.run), ("commit-sync", syncer.run)):
        handle = ThreadHandle(name, "commit", None)
        found.handles.append(handle)
        args = (lambda h=handle: h.stopping, handle.progress)
        threads.append(threading.Thread(target=body, args=args, name=name))
    for thread in threads:
        thread.start()
    yield found
    backend.gate.set()
    for handle in found.handles:
        handle.stop_event.set()
    committer.wake()
    syncer.wake()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), f"{thread.name} did not stop"


def _committed(backend: SqliteBackend) -> int:
    conn = backend.connect()
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def test_next_batch_is_written_while_the_previous_one_flushes(pipeline: Pipeline) -> None:
    first = pipeline.store.enqueue(message("a@example.test"))
    assert pipeline.backend.flushing.wait(10), "the first batch reached its flush"
    second = pipeline.store.enqueue(message("b@example.test"))
    # The flush of the first is held: the second is committed meanwhile, none is settled.
    wait_for(lambda: _committed(pipeline.backend) == 2, 10, what="the second batch written")
    assert not first.done() and not second.done(), "settled before its flush"
    pipeline.backend.gate.set()
    assert first.result(10) is None and second.result(10) is None


def test_a_failed_flush_fails_its_batches(pipeline: Pipeline) -> None:
    pipeline.backend.fail_next = True
    future = pipeline.store.enqueue(message("a@example.test"))
    pipeline.backend.gate.set()
    with pytest.raises(StoreError, match="Input/output error"):
        future.result(10)
    wait_for(
        lambda: any(" 1050 " in line for line in pipeline.sink.lines),
        10,
        what=f"1050 in {pipeline.sink.lines}",
    )
    assert pipeline.store.enqueue(message("b@example.test")).result(10) is None


def test_stop_flushes_what_was_committed(tmp_path: Path) -> None:
    backend = GatedBackend(tmp_path / "queue.db")
    backend.initialize()
    backend.gate.set()
    syncer = CommitSyncer(backend, EventLog())
    committer = Committer(backend, EventLog(), syncer=syncer)
    store = QueueStore(backend, committer)
    handle = ThreadHandle("commit-sync", "commit", None)
    handle.stop_event.set()  # asked to stop before anything came: it waits for the writer
    sync_thread = threading.Thread(target=syncer.run, args=(lambda: True, handle.progress))
    stop = threading.Event()
    writer = threading.Thread(target=committer.run, args=(stop.is_set, handle.progress))
    writer.start()
    sync_thread.start()
    futures = [store.enqueue(message(f"r{n}@example.test")) for n in range(20)]
    stop.set()
    committer.wake()
    writer.join(10)
    sync_thread.join(10)
    assert not sync_thread.is_alive()
    assert all(f.result(0) is None for f in futures)
