"""Group commit on PostgreSQL in one round trip (issue 13 point 5), on a real server in a
schema of the test's own: a batch of N accepted messages is one round trip, BEGIN to
COMMIT; a failing operation in it still fails alone and the others commit (the batch is
run again statement by statement); a connection lost mid-batch fails the whole batch;
no caller hears of its operation before the COMMIT returned."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from mailgate.errors import StoreError
from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe.events import EventLog
from mailgate.queue import pg_pipeline
from mailgate.queue.backend import Connection
from mailgate.queue.commit import Committer, DirectWriter
from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.store import QueueStore
from mailgate.supervise.handle import ThreadHandle
from tests.support import pg_rounds
from tests.support.process import wait_for
from tests.support.stores import admin, open_store, sql


def message(rcpt: str = "a@x.test") -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="s@example.org",
        recipients=(NewRecipient(rcpt, "postoffice"),),
        body=b"Subject: x\r\n\r\nbody\r\n",
        received_at=now,
        client="test [127.0.0.1]",
    )


@pytest.fixture
def backend(tmp_path: Any) -> Iterator[PostgresBackend]:
    with open_store("postgres", tmp_path) as backend:
        assert isinstance(backend, PostgresBackend)
        yield backend


class Batch:
    """A committer whose thread starts only once the batch is queued: one batch."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.committer = Committer(backend, EventLog())
        self.store = QueueStore(backend, self.committer)
        self._handle = ThreadHandle("commit", "commit", None)
        self.thread = threading.Thread(
            target=self.committer.run, args=(lambda: self._handle.stopping, self._handle.progress)
        )

    def run(self, futures: list[Future[Any]]) -> None:
        self.thread.start()
        for future in futures:
            future.exception(30)

    def submit(self, name: str, op: Callable[[Connection], Any]) -> Future[Any]:
        return self.committer.submit(name, op)

    def stop(self) -> None:
        self._handle.stop_event.set()
        self.committer.wake()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def batch(backend: PostgresBackend) -> Iterator[Batch]:
    batch = Batch(backend)
    yield batch
    batch.stop()


def count(backend: PostgresBackend, table: str) -> int:
    return int(sql(backend, f"SELECT COUNT(*) FROM {table}")[0][0])


def test_a_batch_of_accepted_messages_is_one_round_trip(
    backend: PostgresBackend, batch: Batch
) -> None:
    backend.take().close()  # the pool's connection is opened outside the count
    futures = [batch.store.enqueue(message()) for _ in range(25)]
    with pg_rounds.counting() as trips:
        batch.run(futures)
    assert all(f.exception() is None for f in futures)
    stats = batch.committer.statistics()
    assert (stats.batches, stats.largest_batch, stats.replayed) == (1, 25, 0)
    assert trips.of(batch.thread) == 1, "BEGIN, 25 savepoints and messages, COMMIT: one"
    assert count(backend, "messages") == 25 and count(backend, "recipients") == 25


def test_a_failing_operation_in_a_pipelined_batch_fails_alone_and_the_rest_commit(
    backend: PostgresBackend, batch: Batch
) -> None:
    first = message("b@x.test")
    writer = DirectWriter(backend)  # the duplicate's original, committed beforehand
    QueueStore(backend, writer).enqueue(first).result(10)
    writer.close()
    goods = [message() for _ in range(3)]
    futures = [batch.store.enqueue(goods[0]), batch.store.enqueue(first)]
    futures += [batch.store.enqueue(m) for m in goods[1:]]
    batch.run(futures)
    assert isinstance(futures[1].exception(), StoreError), "the duplicate queue id fails"
    assert [f.exception() for f in futures[:1] + futures[2:]] == [None, None, None]
    assert batch.committer.statistics().replayed == 1, "run again, statement by statement"
    ids = {row[0] for row in sql(backend, "SELECT id FROM messages")}
    assert ids == {first.queue_id, *(m.queue_id for m in goods)}
    assert count(backend, "recipients") == 4


def test_an_operation_that_raises_in_a_pipelined_batch_fails_alone_without_a_rerun(
    backend: PostgresBackend, batch: Batch
) -> None:
    def broken(conn: Connection) -> None:
        conn.execute("UPDATE messages SET size = size WHERE id = ?", ("none",))
        raise ValueError("a bug in the operation")

    ok = [batch.store.enqueue(message()) for _ in range(2)]
    bad = batch.submit("broken", broken)
    ok.append(batch.store.enqueue(message()))
    batch.run([*ok, bad])
    assert isinstance(bad.exception(), StoreError) and "a bug" in str(bad.exception())
    assert [f.exception() for f in ok] == [None, None, None]
    assert batch.committer.statistics().replayed == 0
    assert count(backend, "messages") == 3


def test_a_connection_lost_mid_batch_fails_the_whole_batch(
    backend: PostgresBackend, batch: Batch
) -> None:
    def lose_the_connection(conn: Connection) -> None:
        # The server ends this very session, as a restart or a network cut would.
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    futures = [batch.store.enqueue(message())]
    futures.append(batch.submit("lose", lose_the_connection))
    futures.append(batch.store.enqueue(message()))
    batch.run(futures)
    for future in futures:
        assert isinstance(future.exception(), StoreError), future.exception()
    assert batch.committer.statistics().replayed == 0, "a lost COMMIT is never sent again"
    assert count(backend, "messages") == 0
    after = batch.store.enqueue(message())  # the committer opened a fresh connection
    assert after.exception(30) is None
    assert count(backend, "messages") == 1


def test_nothing_is_answered_before_the_commit_returned(
    backend: PostgresBackend, batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    returned: list[bool] = [False]
    original = pg_pipeline.PipelinedTx.commit

    def commit(self: pg_pipeline.PipelinedTx) -> None:
        original(self)
        returned[0] = True

    monkeypatch.setattr(pg_pipeline.PipelinedTx, "commit", commit)
    seen: list[bool] = []
    futures = [batch.store.enqueue(message()) for _ in range(10)]
    for future in futures:
        future.add_done_callback(lambda _: seen.append(returned[0]))
    batch.run(futures)
    assert seen == [True] * 10


def test_a_pooled_connection_the_server_ended_is_not_used_for_a_batch(
    backend: PostgresBackend, batch: Batch
) -> None:
    conn = backend.take()
    pid = conn.info.backend_pid
    backend.give(conn)
    with admin() as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: gone(pid), 10, what="the ended session gone from pg_stat_activity")
    future = batch.store.enqueue(message())
    batch.run([future])
    assert future.exception() is None
    assert count(backend, "messages") == 1


def gone(pid: int) -> bool:
    with admin() as conn:
        row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is None
