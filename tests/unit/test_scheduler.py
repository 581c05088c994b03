"""interchange/scheduler.py's Scheduler, one tick at a time on a fake clock over a real SQLite
queue: leases that ran out, retries that came due, mail past its lifetime, connectors the
configuration dropped, the connector stall watch, and purging finished messages."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.interchange.scheduler import PURGE_EVERY, Scheduler
from mailgate.interchange.state import Connectors
from mailgate.model import Disposition, Outcome
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.queue import track
from mailgate.queue.reader import QueueReader
from tests.support.stage import Stage, stage

OWNER = "mx.test:1:postoffice-1:1:"
STALL_AFTER = 30.0
WAIT = 10.0


class Clock:
    """The wall clock (`now`) and the monotonic one (`timer`), moved by the test alone."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1000.0

    def __call__(self) -> float:
        return self.now

    def timer(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@dataclass
class Bench:
    queue: Stage
    clock: Clock
    scheduler: Scheduler
    reader: QueueReader
    connectors: Connectors

    def tick(self) -> None:
        self.scheduler.tick(self.reader)

    def generation(self) -> int:
        return self.queue.wakeup.generation("postoffice")


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    clock = Clock()
    with stage(tmp_path, clock=clock) as queue:
        connectors = Connectors(["postoffice"])
        scheduler = Scheduler(
            queue.store,
            queue.wakeup,
            queue.events,
            connectors,
            keep_done=0.0,
            stall_after=STALL_AFTER,
            threads_summary=lambda name: f"threads of {name}",
            counters=Counters(),
            route=lambda address: "postoffice" if address.endswith("@x.test") else None,
            known_connectors=lambda: ["postoffice"],
            clock=clock,
            timer=clock.timer,
        )
        reader = queue.store.reader()
        try:
            yield Bench(queue, clock, scheduler, reader, connectors)
        finally:
            reader.close()


def test_a_lease_that_ran_out_is_ended_and_its_connector_woken(bench: Bench) -> None:
    queue_id = bench.queue.enqueue("a@x.test", at=bench.clock.now)
    bench.queue.store.claim("postoffice", OWNER, 10).result(WAIT)
    bench.tick()
    assert bench.queue.states(queue_id) == {"a@x.test": "active"}, "the lease still runs"
    assert bench.queue.seen.of(catalog.LEASES_RELEASED) == []
    before = bench.generation()
    bench.clock.advance(31)  # the stage's lease is 30 s
    bench.tick()
    [released] = bench.queue.seen.of(catalog.LEASES_RELEASED)
    assert released["count"] == 1 and released["why"] == "after lease expiry"
    assert bench.queue.states(queue_id) != {"a@x.test": "active"}
    assert bench.generation() > before, "its connector was told"


def test_a_retry_that_came_due_wakes_its_connector_and_one_not_yet_due_does_not(
    bench: Bench,
) -> None:
    bench.queue.enqueue("a@x.test", at=bench.clock.now)
    [claim] = bench.queue.store.claim("postoffice", OWNER, 10).result(WAIT)
    later = Outcome(claim, Disposition.DEFERRED, "451 later", bench.clock.now, bench.clock.now)
    bench.queue.store.record([later], OWNER).result(WAIT)
    quiet = bench.generation()
    bench.tick()
    assert bench.generation() == quiet, "nothing is due: nobody is woken"
    bench.clock.advance(61)  # the stage's first retry comes after 60 s
    bench.tick()
    assert bench.generation() == quiet + 1, "the retry came due with time"


def test_mail_past_its_lifetime_that_nobody_attempts_bounces(bench: Bench) -> None:
    old = bench.queue.enqueue("a@x.test", at=bench.clock.now)
    bench.clock.advance(3601)  # the stage's lifetime is 3600 s
    young = bench.queue.enqueue("b@x.test", at=bench.clock.now)
    bench.tick()
    assert bench.queue.states(old) == {"a@x.test": "bounced"}
    assert bench.queue.states(young) == {"b@x.test": "queued"}
    [bounced] = bench.queue.seen.of(catalog.BOUNCED)
    assert bounced["recipient"] == "a@x.test" and bounced["queue_id"] == old
    assert bench.queue.seen.of(catalog.MESSAGE_DONE) == [{"queue_id": old}]


def test_waiting_mail_of_a_connector_no_longer_configured_is_routed_again_or_bounced(
    bench: Bench,
) -> None:
    queue_id = bench.queue.enqueue("a@x.test", "b@elsewhere.org", connector="gone")
    before = bench.generation()
    bench.tick()
    [event] = bench.queue.seen.of(catalog.RECIPIENTS_REROUTED)
    assert event["connector"] == "gone" and event["moved"] == "1 to postoffice"
    assert (event["rerouted"], event["bounced"]) == (1, 1)
    recipients = {r.address: r for r in bench.queue.history(queue_id).recipients}
    assert (recipients["a@x.test"].connector, recipients["a@x.test"].state) == (
        "postoffice",
        "queued",
    )
    assert recipients["b@elsewhere.org"].state == "bounced"
    assert bench.generation() > before, "the connector it moved to was told"


def test_a_connector_with_due_mail_and_no_completion_is_reported_stalled_until_it_completes(
    bench: Bench,
) -> None:
    bench.queue.enqueue("a@x.test", at=bench.clock.now)
    bench.tick()
    bench.clock.advance(STALL_AFTER / 2)
    bench.tick()
    assert bench.queue.seen.of(catalog.CONNECTOR_STALLED) == [], "not for long enough yet"
    bench.clock.advance(STALL_AFTER)
    bench.tick()
    [stalled] = bench.queue.seen.of(catalog.CONNECTOR_STALLED)
    assert (stalled["connector"], stalled["due"]) == ("postoffice", 1)
    assert stalled["threads"] == "threads of postoffice" and stalled["seconds"] > STALL_AFTER
    bench.clock.advance(1)
    bench.tick()
    assert len(bench.queue.seen.of(catalog.CONNECTOR_STALLED)) == 1, "repeated only later"
    bench.connectors["postoffice"].completed(delivered=1, deferred=0, bounced=0)
    bench.tick()
    [recovered] = bench.queue.seen.of(catalog.CONNECTOR_RECOVERED)
    assert recovered["connector"] == "postoffice"


def test_a_tick_only_asks_whether_mail_is_due_and_counts_it_for_a_stall_report_alone(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.6: counting every due recipient on every tick cost a third of a core with a
    million queued; a tick seeks (has_due), and only a stall report counts."""
    counted: list[str] = []
    count = bench.reader.due_load

    def due_load(connector: str, now: float) -> tuple[int, float | None]:
        counted.append(connector)
        return count(connector, now)

    monkeypatch.setattr(bench.reader, "due_load", due_load)
    queued_at = bench.clock.now
    bench.queue.enqueue("a@x.test", at=queued_at)
    before = bench.generation()
    bench.tick()
    bench.clock.advance(STALL_AFTER / 2)
    bench.tick()
    assert counted == [] and bench.generation() > before, "woken, nothing counted"
    bench.clock.advance(STALL_AFTER)
    bench.tick()
    [stalled] = bench.queue.seen.of(catalog.CONNECTOR_STALLED)
    assert counted == ["postoffice"], "counted once, for the report"
    assert stalled["due"] == 1 and stalled["oldest"] == round(bench.clock.now - queued_at)


def test_a_paused_connector_is_never_reported_stalled(bench: Bench) -> None:
    bench.connectors.set_paused("postoffice", True)
    bench.queue.enqueue("a@x.test", at=bench.clock.now)
    for _ in range(3):
        bench.tick()
        bench.clock.advance(STALL_AFTER)
    assert bench.queue.seen.of(catalog.CONNECTOR_STALLED) == []


def test_finished_messages_are_purged_every_few_minutes(bench: Bench) -> None:
    queue_id = bench.queue.enqueue("a@x.test", at=bench.clock.now)
    [claim] = bench.queue.store.claim("postoffice", OWNER, 10).result(WAIT)
    done = Outcome(claim, Disposition.DELIVERED, "250 ok", bench.clock.now, bench.clock.now)
    bench.queue.store.record([done], OWNER).result(WAIT)
    bench.clock.advance(1)
    bench.tick()
    assert bench.queue.seen.of(catalog.MESSAGES_PURGED) == [], "not before PURGE_EVERY"
    bench.clock.advance(PURGE_EVERY)
    bench.tick()
    [purged] = bench.queue.seen.of(catalog.MESSAGES_PURGED)
    assert purged["count"] == 1
    reader = bench.queue.store.reader()
    assert reader.message_history(queue_id) is None, "gone from the queue"
    reader.close()


def test_a_tick_writes_the_tracking_keys_of_what_was_queued_since(bench: Bench) -> None:
    queued = [bench.queue.enqueue(f"t{n}@x.test", at=bench.clock.now) for n in range(3)]
    conn = bench.queue.store.backend.connect()
    try:
        assert track.mark(conn) == (0, "")
        bench.tick()
        assert track.mark(conn) == (3, queued[-1])
        keys = conn.execute("SELECT key FROM track_keys WHERE kind = 'r' ORDER BY 1").fetchall()
        assert [k for (k,) in keys] == ["t0@x.test", "t1@x.test", "t2@x.test"]
    finally:
        conn.close()


def test_a_failing_tracking_pass_is_event_4070_once_a_minute_and_the_tick_goes_on(
    bench: Bench,
) -> None:
    db = sqlite3.connect(bench.queue.backend.path)  # every write of a key fails, as on EIO
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON track_keys "
        "BEGIN SELECT RAISE(ABORT, 'track_keys: disk I/O error'); END"
    )
    db.close()
    queued = bench.queue.enqueue("a@x.test", at=bench.clock.now)
    bench.clock.advance(PURGE_EVERY + 1)  # this tick purges too
    before = bench.generation()
    bench.tick()
    [failed] = bench.queue.seen.of(catalog.TRACKING_KEYS_FAILED)
    assert "track_keys" in failed["error"]
    assert bench.generation() > before, "the due mail was still announced"
    assert bench.queue.seen.of(catalog.MESSAGES_PURGED) == [] and bench.queue.states(queued)
    bench.clock.advance(30)
    bench.tick()
    assert len(bench.queue.seen.of(catalog.TRACKING_KEYS_FAILED)) == 1, "not every second"
    bench.clock.advance(31)
    bench.tick()
    assert len(bench.queue.seen.of(catalog.TRACKING_KEYS_FAILED)) == 2, "again after a minute"
    reader = bench.queue.store.reader()
    try:
        assert reader.find("a@x.test") == [queued], "found without the pass"
    finally:
        reader.close()
