"""The queue on both stores (a real SQLite file, a PostgreSQL schema): group commit, claims,
outcomes, leases; and SQLite's own query plans, writer lock and fsync levels."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path

import pytest

from mailgate.errors import StoreError
from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.observe.events import EventLog
from mailgate.queue import ops
from mailgate.queue.backend import Connection
from mailgate.queue.commit import Committer, DirectWriter
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from mailgate.supervise.handle import ThreadHandle
from tests.support.stores import AnyBackend

OWNER = "test:1:t1:"


def message(*rcpts: str, connector: str = "postoffice", at: float | None = None) -> NewMessage:
    now = time.time() if at is None else at
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="s@example.org",
        recipients=tuple(NewRecipient(r, connector) for r in rcpts),
        body=b"Subject: x\r\n\r\nbody\r\n",
        received_at=now,
        client="test [127.0.0.1]",
    )


@pytest.fixture
def backend(queue_backend: AnyBackend) -> AnyBackend:
    return queue_backend


@pytest.fixture
def committer(backend: AnyBackend) -> Iterator[Committer]:
    committer = Committer(backend, EventLog())
    handle = ThreadHandle("commit", "commit", None)
    thread = threading.Thread(target=committer.run, args=(lambda: handle.stopping, handle.progress))
    thread.start()
    yield committer
    handle.stop_event.set()
    committer.wake()
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def store(backend: AnyBackend, committer: Committer) -> QueueStore:
    return QueueStore(backend, committer, policy=RetryPolicy(60, 600, 3600), lease=30)


def test_concurrent_enqueues_share_commits(store: QueueStore, committer: Committer) -> None:
    futures = []
    barrier = threading.Barrier(20)

    def submit() -> None:
        barrier.wait()
        for _ in range(25):
            futures.append(store.enqueue(message("a@x.test")))

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done, _ = wait(futures, timeout=30)
    assert len(done) == 500 and all(f.exception() is None for f in done)
    stats = committer.statistics()
    assert stats.operations == 500
    assert stats.batches < 500, "group commit: several enqueues shared one fsync"
    assert stats.largest_batch > 1


def test_claim_record_and_finish(store: QueueStore, backend: AnyBackend) -> None:
    msg = message("a@x.test", "b@x.test")
    store.enqueue(msg).result(10)
    claims = store.claim("postoffice", OWNER, 10).result(10)
    assert {c.address for c in claims} == {"a@x.test", "b@x.test"}
    assert store.claim("postoffice", OWNER, 10).result(10) == [], "leased work is not claimed twice"
    now = time.time()
    outcomes = [
        Outcome(claims[0], Disposition.DELIVERED, "250 ok", now, now),
        Outcome(claims[1], Disposition.FAILED, "550 no", now, now),
    ]
    recorded = store.record(outcomes, OWNER).result(10)
    assert [r.state.value for r in recorded] == ["delivered", "bounced"]
    assert [r.message_done for r in recorded] == [True, False], "reported once per message"
    reader = store.reader()
    assert reader.body(msg.queue_id) is None, "the body goes once every recipient is final"
    reader.close()


def test_temporary_failure_defers_with_backoff(store: QueueStore) -> None:
    store.enqueue(message("a@x.test")).result(10)
    claim = store.claim("postoffice", OWNER, 10).result(10)[0]
    now = time.time()
    recorded = store.record([Outcome(claim, Disposition.DEFERRED, "451 later", now, now)], OWNER)
    item = recorded.result(10)[0]
    assert item.state.value == "deferred"
    assert item.retry_at is not None and 55 < item.retry_at - now < 65
    assert store.claim("postoffice", OWNER, 10).result(10) == [], "not due before its retry time"


def test_expired_message_bounces_instead_of_deferring(store: QueueStore) -> None:
    old = time.time() - 7200  # older than the policy's 3600 s lifetime
    store.enqueue(message("a@x.test", at=old)).result(10)
    claim = store.claim("postoffice", OWNER, 10).result(10)[0]
    now = time.time()
    item = store.record([Outcome(claim, Disposition.DEFERRED, "451 x", now, now)], OWNER).result(10)
    assert item[0].state.value == "bounced" and "expired" in item[0].reply


def test_internal_errors_quarantine(store: QueueStore, backend: AnyBackend) -> None:
    store.enqueue(message("a@x.test")).result(10)
    for attempt in range(1, 4):
        conn = backend.connect()
        conn.execute("UPDATE recipients SET due_at = 0")
        conn.close()
        claim = store.claim("postoffice", OWNER, 10).result(10)[0]
        now = time.time()
        outcome = Outcome(claim, Disposition.INTERNAL_ERROR, "boom", now, now)
        state = store.record([outcome], OWNER).result(10)[0].state.value
        assert state == ("quarantined" if attempt == 3 else "deferred")


def test_lease_expiry_and_lost_lease(store: QueueStore, backend: AnyBackend) -> None:
    store.enqueue(message("a@x.test")).result(10)
    claim = store.claim("postoffice", OWNER, 10).result(10)[0]
    conn = backend.connect()
    conn.execute("UPDATE recipients SET lease_until = 0")
    conn.close()
    assert store.expire_leases().result(10) == 1
    again = store.claim("postoffice", "test:1:t2:", 10).result(10)
    assert len(again) == 1 and again[0].redelivery, "a released recipient is flagged"
    now = time.time()
    late = store.record([Outcome(claim, Disposition.DELIVERED, "250", now, now)], OWNER).result(10)
    assert late[0].lease_lost, "the first owner's outcome does not overwrite the second's"


def test_release_by_owner_prefix(store: QueueStore) -> None:
    store.enqueue(message("a@x.test")).result(10)
    store.enqueue(message("b@x.test")).result(10)
    store.claim("postoffice", "node:1:postoffice-1:", 1).result(10)
    store.claim("postoffice", "node:1:postoffice-10:", 1).result(10)
    assert store.release_leases("node:1:postoffice-1:").result(10) == 1


def test_failed_operation_leaves_nothing_and_others_commit(
    store: QueueStore, committer: Committer, backend: AnyBackend
) -> None:
    good = message("a@x.test")
    bad = replace(message("b@x.test"), recipients=(NewRecipient("b@x.test", "postoffice"),) * 1)
    store.enqueue(bad).result(10)
    duplicate = store.enqueue(bad)  # same queue id: a constraint violation inside its savepoint
    ok = store.enqueue(good)
    with pytest.raises(StoreError):
        duplicate.result(10)
    ok.result(10)
    conn = backend.connect()
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 2
    conn.close()


@pytest.mark.sqlite_only
def test_claim_and_lease_queries_use_indexes(backend: SqliteBackend) -> None:
    db = sqlite3.connect(backend.path)
    claim_plan = " ".join(
        str(row[3])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE connector = ? AND state IN "
            "('queued', 'deferred') AND due_at <= ? ORDER BY due_at LIMIT ?",
            ("postoffice", 0, 10),
        )
    )
    assert "recipients_due" in claim_plan and "TEMP B-TREE" not in claim_plan, claim_plan
    lease_plan = " ".join(
        str(row[3])
        for row in db.execute(
            "EXPLAIN QUERY PLAN UPDATE recipients SET state = 'queued' "
            "WHERE state = 'active' AND lease_until < ?",
            (0,),
        )
    )
    # recipients_state (schema 4) finds the active ones as well as the lease index does
    assert "recipients_lease" in lease_plan or "recipients_state (state=?)" in lease_plan, (
        lease_plan
    )
    db.close()


def test_direct_writer_and_unusable_file(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "q.db")
    backend.initialize()
    writer = DirectWriter(backend)
    store = QueueStore(backend, writer)
    store.enqueue(message("a@x.test")).result(0)
    assert len(store.claim("postoffice", OWNER, 5).result(0)) == 1
    writer.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        SqliteBackend(junk).initialize()


def test_only_processes_that_accept_mail_wait_for_fsync(tmp_path: Path) -> None:
    """Receivers and pickup commit with synchronous=FULL; the interchange process's claims and
    outcomes (redone if a power failure loses them) with NORMAL."""
    from mailgate.config import parse_config
    from mailgate.service.parts import QueuePart
    from mailgate.service.processes import interchange_worker, receive_worker, single_process

    config = parse_config({"service": {"data_dir": str(tmp_path), "hostname": "mx.test"}})
    for build, main_sync in (
        (single_process, 2),
        (receive_worker, 2),
        (interchange_worker, 1),
    ):
        role = build.__name__
        service = build(config, EventLog()).part(QueuePart)
        service.backend.initialize()
        conn = service.backend.connect()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == main_sync, role
        conn.close()
        pickup = service.pickup_store.backend.connect()
        assert pickup.execute("PRAGMA synchronous").fetchone()[0] == 2, f"{role}: pickup durable"
        pickup.close()


@pytest.mark.sqlite_only
def test_writers_queue_on_the_writer_lock_and_every_ending_releases_it(
    backend: SqliteBackend,
) -> None:
    """A second writer waits on the flock (not SQLite's sleep-and-retry) until the first one
    commits; a rollback and a close release the lock too."""
    first, second = backend.connect(), backend.connect()
    order: list[str] = []
    first.begin()
    started = threading.Event()

    def other() -> None:
        started.set()
        second.begin()
        order.append("second began")
        second.rollback()

    thread = threading.Thread(target=other)
    thread.start()
    assert started.wait(5)
    thread.join(0.3)
    assert thread.is_alive(), "the second writer should wait for the lock"
    first.execute("INSERT INTO meta (key, value) VALUES ('lock-test', '1')")
    order.append("first committed")
    first.commit()
    thread.join(5)
    assert order == ["first committed", "second began"]
    lock = backend.path.with_name(backend.path.name + "-writer")
    probe = open(lock, "rb")  # noqa: SIM115
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free after commit and rollback
        fcntl.flock(probe, fcntl.LOCK_UN)
        first.begin()
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first.close()  # closing mid-transaction releases it
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        probe.close()
        second.close()


@pytest.mark.sqlite_only
def test_a_command_gives_up_on_a_writer_lock_held_too_long(backend: SqliteBackend) -> None:
    """The CLI and the master poll with a deadline; a wedged writer cannot hang them."""
    holder = backend.connect()
    holder.begin()
    try:
        waiter = SqliteBackend(backend.path, lock_timeout=0.3).connect()
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"held by another writer for over 0\.3s"):
            waiter.begin()
        assert 0.3 <= time.monotonic() - started < 5
        holder.rollback()
        waiter.begin()  # free again: it gets the lock at once
        waiter.rollback()
        waiter.close()
    finally:
        holder.close()


@pytest.mark.sqlite_only
def test_a_begin_that_fails_fails_its_batch_at_once(backend: SqliteBackend) -> None:
    """A batch whose BEGIN fails (here: the writer lock held past the committer's
    lock_timeout; on PostgreSQL: no connection to be had) fails every caller in it at once,
    so a receiver answers 451 now, not when its own deadline runs out."""
    holder = backend.connect()
    holder.begin()
    committer = Committer(SqliteBackend(backend.path, lock_timeout=0.2), EventLog())
    handle = ThreadHandle("commit", "commit", None)
    thread = threading.Thread(target=committer.run, args=(lambda: handle.stopping, handle.progress))
    thread.start()
    try:
        store = QueueStore(backend, committer)
        with pytest.raises(StoreError, match="held by another writer"):
            store.enqueue(message("a@x.test")).result(5)
        holder.rollback()
        store.enqueue(message("b@x.test")).result(5)  # and the next batch goes through
    finally:
        holder.close()
        handle.stop_event.set()
        committer.wake()
        thread.join(10)


def test_a_failed_operation_alone_in_its_batch_leaves_nothing(
    store: QueueStore, committer: Committer, backend: AnyBackend
) -> None:
    """A batch of one runs without a savepoint: its failure rolls the transaction back,
    what it wrote before failing included, and the committer goes on."""

    def writes_then_fails(conn: Connection) -> None:
        ops.insert_message(conn, message("half@x.test"), None)
        raise RuntimeError("after a write")

    with pytest.raises(StoreError, match="after a write"):
        committer.submit("half", writes_then_fails).result(10)
    store.enqueue(message("a@x.test")).result(10)
    conn = backend.connect()
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 1
    conn.close()
