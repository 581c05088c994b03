"""Group commits overlap their flushes (queue/commit_sync.py, issue 14.2a), on a real SQLite
file: a batch is settled only after the flush that follows its COMMIT, and the next batch is
written while that flush is still running. Regression: the flush ran inside COMMIT, under
the one writer lock, so on a slow-flush disk every commit of every process waited for the
previous one's flush. At low load (nothing waiting behind a batch) the committer flushes its
own batch instead, sparing a thread hand-off (issue 14), with the same guarantees."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.observe.events import EventLog, HumanFormatter
from mailgate.queue import ops
from mailgate.queue.backend import Connection
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
        self.flushed_in: list[str] = []  # the thread of each flush

    def sync_commits(self) -> None:
        self.flushed_in.append(threading.current_thread().name)
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
    committer: Committer
    syncer: CommitSyncer
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
    found = Pipeline(backend, QueueStore(backend, committer), committer, syncer, events, sink)
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


def _held(
    pipeline: Pipeline, address: str
) -> tuple[threading.Event, threading.Event, Future[None]]:
    """A write that goes on only once let go: what is submitted meanwhile waits behind it."""
    running, release = threading.Event(), threading.Event()

    def op(conn: Connection) -> None:
        running.set()
        release.wait(10)
        ops.insert_message(conn, message(address))

    return running, release, pipeline.committer.submit("held", op)


def _under_load(pipeline: Pipeline) -> tuple[Future[None], threading.Event, Future[None]]:
    """A first batch committed with a second waiting behind it: the first goes to the syncer
    (its flush held at the gate), the second is being written (until let go)."""
    running, release, first = _held(pipeline, "a@example.test")
    assert running.wait(10), "the first write started"
    second_running, second_release, second = _held(pipeline, "b@example.test")
    release.set()
    assert pipeline.backend.flushing.wait(10), "the first batch reached its flush"
    assert second_running.wait(10), "the second write started"
    return first, second_release, second


def test_next_batch_is_written_while_the_previous_one_flushes(pipeline: Pipeline) -> None:
    """Under load (a write waits when a COMMIT returns), the flush is the syncer's."""
    first, release, second = _under_load(pipeline)
    release.set()
    # The flush of the first is held: the second is committed meanwhile, none is settled.
    wait_for(lambda: _committed(pipeline.backend) == 2, 10, what="the second batch written")
    assert not first.done() and not second.done(), "settled before its flush"
    assert pipeline.backend.flushed_in == ["commit-sync"]
    pipeline.backend.gate.set()
    assert first.result(10) is None and second.result(10) is None
    # Written while the first was unflushed, the second was flushed by the syncer too.
    assert set(pipeline.backend.flushed_in) == {"commit-sync"}


def test_a_failed_flush_in_the_syncer_fails_its_batches_with_1050(pipeline: Pipeline) -> None:
    pipeline.backend.fail_next = True
    first, release, second = _under_load(pipeline)
    release.set()
    wait_for(lambda: _committed(pipeline.backend) == 2, 10, what="the second batch written")
    pipeline.backend.gate.set()
    with pytest.raises(StoreError, match=r"flushing 1 committed batches failed: .*Input/output"):
        first.result(10)
    assert second.result(10) is None  # committed after that flush began: the next one has it
    assert set(pipeline.backend.flushed_in) == {"commit-sync"}
    wait_for(
        lambda: any(" 1050 " in line for line in pipeline.sink.lines),
        10,
        what=f"1050 in {pipeline.sink.lines}",
    )


def test_an_idle_committer_flushes_its_batch_itself(pipeline: Pipeline) -> None:
    """At low load (nothing waits behind a batch, nothing unflushed) the committer flushes
    and settles in its own thread: no hand-off to the syncer, still after the flush."""
    pipeline.backend.gate.set()
    for n in range(3):
        assert pipeline.store.enqueue(message(f"r{n}@example.test")).result(10) is None
    assert pipeline.backend.flushed_in == ["commit"] * 3
    assert pipeline.syncer.statistics().flushes == 3


def test_an_idle_committer_settles_only_after_its_flush(pipeline: Pipeline) -> None:
    future = pipeline.store.enqueue(message("a@example.test"))
    assert pipeline.backend.flushing.wait(10), "the batch reached its flush"
    wait_for(lambda: _committed(pipeline.backend) == 1, 10, what="the batch written")
    assert not future.done(), "settled before its flush"
    pipeline.backend.gate.set()
    assert future.result(10) is None
    assert pipeline.backend.flushed_in == ["commit"]


def test_a_write_that_waited_for_the_committers_flush_brings_the_overlap_back(
    pipeline: Pipeline,
) -> None:
    """Load comes and goes between batches: once a write had to wait for a flush in the
    committer's thread, the committer hands its batches to the syncer for a while."""
    pipeline.committer.overlap_hold = 60.0  # "a while" outlasts this test on any machine
    first = pipeline.store.enqueue(message("a@example.test"))
    assert pipeline.backend.flushing.wait(10), "the first batch reached its flush"
    second = pipeline.store.enqueue(message("b@example.test"))  # waits for that flush
    pipeline.backend.gate.set()
    assert first.result(10) is None and second.result(10) is None
    assert pipeline.store.enqueue(message("c@example.test")).result(10) is None
    assert pipeline.backend.flushed_in == ["commit", "commit-sync", "commit-sync"]


def test_a_batch_whose_flush_ended_does_not_keep_the_next_one_from_the_committer(
    pipeline: Pipeline,
) -> None:
    """A batch counts as waiting for the syncer until its flush ended, not until its callers
    were told. Regression: while the syncer told them (a caller told sends its next message
    at once), the writer took the batch for one still flushing and handed the next one off
    too: at one session every batch went through the syncer's wake-up again."""
    pipeline.committer.overlap_hold = 60.0
    first = pipeline.store.enqueue(message("a@example.test"))
    assert pipeline.backend.flushing.wait(10), "the first batch reached its flush"
    second = pipeline.store.enqueue(message("b@example.test"))  # waits: the overlap is back
    telling, told = threading.Event(), threading.Event()

    def slowly(_: object) -> None:  # the syncer's thread, telling the second's caller
        telling.set()
        told.wait(10)

    second.add_done_callback(slowly)
    pipeline.backend.gate.set()
    try:
        assert first.result(10) is None
        assert telling.wait(10), "the syncer flushed the second and is telling its caller"
        pipeline.committer.overlap_hold = 0.0  # the load is gone
        third = pipeline.store.enqueue(message("c@example.test"))
        assert third.result(5) is None, "the third waited for the syncer's telling"
    finally:
        told.set()
    assert second.result(10) is None
    assert pipeline.backend.flushed_in == ["commit", "commit-sync", "commit"]


def test_a_caller_that_writes_again_once_told_is_no_sign_of_load(pipeline: Pipeline) -> None:
    """Regression: the committer looked for writes waiting after it had told its batch's
    callers, so a caller quick to send its next message (one session) looked like load
    and the next batches went through the syncer."""
    pipeline.committer.overlap_hold = 60.0
    later: list[Future[None]] = []

    def again(_: object) -> None:  # the committer's thread, telling the first's caller
        later.append(pipeline.store.enqueue(message("b@example.test")))

    first = pipeline.store.enqueue(message("a@example.test"))
    assert pipeline.backend.flushing.wait(10), "the first batch reached its flush"
    first.add_done_callback(again)  # before it is told: run by the thread that tells it
    pipeline.backend.gate.set()
    assert first.result(10) is None
    wait_for(lambda: later, 10, what="the next write")
    assert later[0].result(10) is None
    assert pipeline.backend.flushed_in == ["commit", "commit"]


def test_a_failed_flush_in_the_committer_fails_its_batch_with_1050(pipeline: Pipeline) -> None:
    pipeline.backend.fail_next = True
    pipeline.backend.gate.set()
    with pytest.raises(StoreError, match="Input/output error"):
        pipeline.store.enqueue(message("a@example.test")).result(10)
    assert pipeline.backend.flushed_in == ["commit"]
    assert any(" 1050 " in line for line in pipeline.sink.lines), pipeline.sink.lines
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
