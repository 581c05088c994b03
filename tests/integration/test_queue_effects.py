"""What a commit owes afterwards, owned by the queue (queue/effects.py), on a real SQLite
file behind the real group committer: the wake-up of the connectors work became due for,
only once the commit is durable and never for a write that failed, and the events of the
reports it queued (2117, 2118), reported once, by the store, not by its callers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailgate.dsn.generate import BounceGenerator, BounceResult
from mailgate.errors import StoreError
from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.observe.events import EventLog, open_event_log
from mailgate.queue.commit import Committer, DirectWriter
from mailgate.queue.effects import Effects
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.handle import ThreadHandle
from tests.support.process import wait_for

OWNER = "test:1:smarthost-1:1:"
ALICE = "alice@po1.net1.example.test"


def route(address: str) -> str | None:
    return "postoffice" if address.endswith("example.test") else "smarthost"


def message(*rcpts: tuple[str, str], sender: str = ALICE) -> NewMessage:
    return NewMessage(
        queue_id=new_queue_id(),
        sender=sender,
        recipients=tuple(NewRecipient(a, c) for a, c in rcpts),
        body=b"Subject: x\r\n\r\nbody\r\n",
        received_at=time.time(),
        client="test [127.0.0.1]",
    )


class WitnessWakeup(Wakeup):
    """The real wake-up, which also notes, as it is told, what another connection (another
    process) sees in the queue: so a test can tell a wake-up came after the commit."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.seen: list[tuple[tuple[str, ...], int]] = []

    def notify(self, *connectors: str) -> None:
        db = sqlite3.connect(self.path)
        try:
            [(waiting,)] = db.execute(
                "SELECT COUNT(*) FROM recipients WHERE state IN ('queued', 'deferred')"
            ).fetchall()
        finally:
            db.close()
        self.seen.append((connectors, int(waiting)))
        super().notify(*connectors)


def soon(predicate: Any, what: str) -> None:
    """Effects run in the commit thread right after it resolved the future, so a moment
    after the caller saw the result: wait for them, within a bound."""
    wait_for(predicate, 5, 0.005, what)


def events(log_dir: Path) -> list[dict[str, Any]]:
    path = log_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def backend(tmp_path: Path) -> SqliteBackend:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    return backend


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    log = open_event_log(tmp_path / "log", stderr=False)
    yield log
    log.close()


@pytest.fixture
def committer(backend: SqliteBackend, log: EventLog) -> Iterator[Committer]:
    committer = Committer(backend, log)
    handle = ThreadHandle("commit", "commit", None)
    thread = threading.Thread(target=committer.run, args=(lambda: handle.stopping, handle.progress))
    thread.start()
    yield committer
    handle.stop_event.set()
    committer.wake()
    thread.join(10)
    assert not thread.is_alive()


def store_of(backend: SqliteBackend, writer: Any, wakeup: Wakeup, log: EventLog) -> QueueStore:
    store = QueueStore(backend, writer, policy=RetryPolicy(60, 600, 3600), lease=30)
    store.use_reports(BounceGenerator("mx.test", "postmaster@mx.test", route))
    store.effects = Effects(wakeup, log)
    return store


def test_a_permanent_failure_wakes_the_bounces_connector_after_the_commit_and_reports_it(
    backend: SqliteBackend, committer: Committer, log: EventLog, tmp_path: Path
) -> None:
    wakeup = WitnessWakeup(backend.path)
    store = store_of(backend, committer, wakeup, log)
    msg = message(("far@elsewhere.org", "smarthost"))
    store.enqueue(msg).result(10)
    soon(lambda: wakeup.seen, "the wake-up of the new mail's connector")
    assert wakeup.seen == [(("smarthost",), 1)], "new mail wakes its connector, once durable"
    postoffice = wakeup.generation("postoffice")

    [claim] = store.claim("smarthost", OWNER, 10).result(10)
    now = time.time()
    failed = Outcome(claim, Disposition.FAILED, "550 5.1.1 no such user", now, now)
    [recorded] = store.record([failed], OWNER).result(10)
    bounce = recorded.done
    assert isinstance(bounce, BounceResult) and bounce.connector == "postoffice"
    soon(lambda: len(wakeup.seen) == 2, "the wake-up of the bounce's connector")
    assert wakeup.seen[-1] == (("postoffice",), 1), "the bounce was visible when it woke"
    assert wakeup.generation("postoffice") == postoffice + 1
    soon(lambda: [e for e in events(tmp_path / "log") if e["id"] == 2117], "event 2117")
    ndr = [e for e in events(tmp_path / "log") if e["id"] == 2117]
    assert len(ndr) == 1 and ndr[0]["fields"]["bounce_id"] == bounce.bounce_id


def test_a_write_that_failed_has_no_effect(
    backend: SqliteBackend, committer: Committer, log: EventLog
) -> None:
    wakeup = WitnessWakeup(backend.path)
    store = store_of(backend, committer, wakeup, log)
    msg = message(("bob@po1.net1.example.test", "postoffice"))
    store.enqueue(msg).result(10)
    soon(lambda: wakeup.seen, "the first message's wake-up")
    with pytest.raises(StoreError):
        store.enqueue(msg).result(10)  # the same queue id again: refused, rolled back
    store.enqueue(message(("far@elsewhere.org", "smarthost"))).result(10)  # a later write
    soon(lambda: len(wakeup.seen) == 2, "the later write's wake-up")
    assert [c for c, _ in wakeup.seen] == [("postoffice",), ("smarthost",)], (
        "no wake-up for the write that was not committed"
    )


def test_a_null_senders_bounce_is_dropped_and_reported_by_the_store(
    backend: SqliteBackend, log: EventLog, tmp_path: Path
) -> None:
    """Enqueued already bounced (every recipient refused at once): 2118 from the enqueue."""
    writer = DirectWriter(backend)
    wakeup = WitnessWakeup(backend.path)
    store = store_of(backend, writer, wakeup, log)
    refused = NewRecipient("gone@elsewhere.org", "smarthost", "554 5.4.4 no route")
    store.enqueue(replace(message(sender=""), recipients=(refused,))).result()
    writer.close()
    [dropped] = [e for e in events(tmp_path / "log") if e["id"] == 2118]
    assert dropped["fields"]["reason"] == "null sender"
    assert wakeup.seen == [], "nothing became due"


def test_the_administrators_commands_wake_what_they_made_due(
    backend: SqliteBackend, log: EventLog
) -> None:
    writer = DirectWriter(backend)
    wakeup = WitnessWakeup(backend.path)
    store = store_of(backend, writer, wakeup, log)
    msg = message(("bob@po1.net1.example.test", "postoffice"), ("far@x.org", "smarthost"))
    store.enqueue(msg).result()
    qid = msg.queue_id
    seen = len(wakeup.seen)
    assert store.hold(qid).result().count == 2
    assert len(wakeup.seen) == seen, "a hold makes nothing due"
    store.release(qid, "smarthost").result()
    assert wakeup.seen[-1] == (("smarthost",), 1)
    everything = wakeup.generation("anything")
    assert store.release(None).result().count == 1  # a bulk release: every connector
    assert wakeup.generation("anything") == everything + 1
    writer.close()


def test_leases_that_end_wake_the_connector_of_the_requeued_work(
    backend: SqliteBackend, log: EventLog
) -> None:
    writer = DirectWriter(backend)
    wakeup = WitnessWakeup(backend.path)
    store = store_of(backend, writer, wakeup, log)
    store.enqueue(message(("far@elsewhere.org", "smarthost"))).result()
    store.claim("smarthost", OWNER, 10).result()
    ended = store.end_leases("its thread died", "test:1:").result()
    assert ended.requeued == 1 and ended.due == ("smarthost",)
    assert wakeup.seen[-1] == (("smarthost",), 1)
    writer.close()


class BrokenWakeup(Wakeup):
    def notify(self, *connectors: str) -> None:
        raise RuntimeError("a bug in a wake-up")


def test_an_effect_that_raises_costs_an_event_not_the_write(
    backend: SqliteBackend, committer: Committer, log: EventLog, tmp_path: Path
) -> None:
    store = store_of(backend, committer, BrokenWakeup(), log)
    first, second = message(("bob@po1.net1.example.test", "postoffice")), message(("b@x.org", "x"))
    assert store.enqueue(first).result(10) is None, "committed, whatever the effect did"
    soon(lambda: [e for e in events(tmp_path / "log") if e["id"] == 4050], "event 4050")
    [failed] = [e for e in events(tmp_path / "log") if e["id"] == 4050]
    assert failed["fields"]["operation"] == "enqueue" and "a bug" in failed["fields"]["error"]
    store.enqueue(second).result(10)  # the commit thread goes on
    assert store.claim("postoffice", OWNER, 10).result(10)[0].queue_id == first.queue_id


def test_a_batch_wakes_each_connector_once_when_every_caller_of_it_was_told(
    backend: SqliteBackend, committer: Committer, log: EventLog
) -> None:
    """Effects run after the whole batch is settled (commit_sync.after_settled), so no
    caller's reply waits behind another's wake-up datagram, and a batch wakes each of its
    connectors once. Regression (issue 14): each future's effects ran inside its set_result,
    before the callers after it were told, and each message sent its own datagram."""
    futures: list[Any] = []

    class Noting(Wakeup):
        def __init__(self) -> None:
            super().__init__()
            self.told: list[list[bool]] = []

        def notify(self, *connectors: str) -> None:
            self.told.append([f.done() for f in futures[:4]])
            super().notify(*connectors)

    wakeup = Noting()
    store = store_of(backend, committer, wakeup, log)
    running, release = threading.Event(), threading.Event()

    def held(conn: Any) -> None:
        running.set()
        release.wait(10)

    first = committer.submit("held", held)
    assert running.wait(10)
    futures.extend(store.enqueue(message((ALICE, "postoffice"))) for _ in range(3))
    futures.append(store.enqueue(message(("far@elsewhere.org", "smarthost"))))
    release.set()  # the four are one batch behind the held write
    first.result(10)
    for future in futures:
        future.result(10)
    soon(lambda: wakeup.told, "the batch's wake-up")
    assert wakeup.told == [[True] * 4]
    assert wakeup.generation("postoffice") == 1 and wakeup.generation("smarthost") == 1
    # Alone in its batch, a write wakes its connector as before.
    store.enqueue(message((ALICE, "postoffice"))).result(10)
    soon(lambda: len(wakeup.told) == 2, "the next wake-up")
    assert wakeup.generation("postoffice") == 2
