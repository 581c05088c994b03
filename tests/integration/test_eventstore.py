"""The event store on real SQLite: an EventLog with the sink, a writer thread driven by a handle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog
from mailgate.observe.eventstore import EventReader, build_query, store_path
from mailgate.observe.eventwriter import EventStoreSink, EventStoreWriter, attach_event_store
from tests.support.eventstore import Running
from tests.support.process import wait_for

ALL = {c: Level.MAXIMUM for c in Category}


@pytest.fixture
def log() -> Iterator[EventLog]:
    events = EventLog(ALL)
    yield events
    events.close()


def reader(log_dir: Path) -> EventReader:
    opened = EventReader.open(store_path(log_dir))
    assert opened is not None
    return opened


def sent(log: EventLog, queue_id: str, n: int = 0) -> None:
    log.emit(
        catalog.SENT,
        queue_id=queue_id,
        recipient=f"user{n}@example.test",
        connector="postoffice",
        reply="250 2.0.0 ok",
        delays="0.10/0.002",
        attempts=1,
    )


def stored_count(log_dir: Path) -> int:
    opened = EventReader.open(store_path(log_dir))  # None until the writer made its table
    if opened is None:
        return 0
    with opened as r:
        return r.count()


def test_events_written_through_the_sink_are_stored_with_their_fields(
    tmp_path: Path, log: EventLog
) -> None:
    writer = attach_event_store(log, tmp_path, 1000)
    running = Running(writer).start()
    try:
        sent(log, "Q1")
        log.emit(catalog.LEASES_RELEASED, count=2, why="after lease expiry")
        log.emit(
            catalog.INVALID_RECIPIENT,
            recipient="evil@x\r\n2026-01-01 forged line",
            client="bad [10.0.0.1]",
            reply="550 5.1.1 no such user",
        )
        wait_for(lambda: stored_count(tmp_path) == 3, 5, what="3 stored events")
    finally:
        running.stop()
    with reader(tmp_path) as r:
        first, second, third = r.query(limit=0)
    assert first["id"] == 2448 and first["name"] == "Sent" and first["category"] == "Sent"
    assert first["queue_id"] == "Q1" and first["severity"] == "info"
    assert first["fields"]["recipient"] == "user0@example.test"
    assert first["message"].startswith("Q1: delivered to <user0@example.test> via postoffice")
    assert second["queue_id"] is None and second["fields"] == {
        "count": 2,
        "why": "after lease expiry",
    }
    # Stored in the escaped (stderr) form: a client cannot forge lines in `mailgate events`.
    assert "\n" not in third["message"] and "\\r\\n" in third["message"]
    assert third["fields"]["recipient"] == "evil@x\r\n2026-01-01 forged line"
    assert first["ts"] <= second["ts"] <= third["ts"]
    assert first["rowid"] < second["rowid"] < third["rowid"]


def test_writer_drains_what_is_queued_when_asked_to_stop(tmp_path: Path, log: EventLog) -> None:
    writer = attach_event_store(log, tmp_path, 10_000)
    running = Running(writer).start()
    for n in range(2000):
        sent(log, f"Q{n}", n)
    running.stop()
    assert not writer.sink.queue
    assert stored_count(tmp_path) == 2000
    assert writer.written == 2000


def test_flush_stores_events_emitted_after_the_writer_stopped(
    tmp_path: Path, log: EventLog
) -> None:
    writer = attach_event_store(log, tmp_path, 1000)
    running = Running(writer).start()
    sent(log, "Q1")
    running.stop()
    log.emit(catalog.SERVICE_STOPPED, reason="SIGTERM received")
    assert writer.flush() == 1
    with reader(tmp_path) as r:
        assert [e["id"] for e in r.query()] == [2448, 1001]


def fill(log_dir: Path, rows: list[tuple[float, Any, dict[str, Any]]]) -> None:
    """Store (time, event, fields) rows through a sink and writer, with given timestamps."""
    sink = EventStoreSink(capacity=len(rows) + 1)
    for when, event, fields in rows:
        sink.queue.append((event, fields, when))
    writer = EventStoreWriter(store_path(log_dir), sink)
    assert writer.flush() == len(rows)


def test_query_filters_combine_and_return_the_most_recent_oldest_first(tmp_path: Path) -> None:
    base = 1_800_000_000.0
    rows: list[tuple[float, Any, dict[str, Any]]] = []
    for n in range(100):
        when = base + n * 60  # one a minute
        if n % 10 == 0:
            rows.append((when, catalog.DEFERRED, {"queue_id": f"Q{n % 3}", "recipient": "a@b",
                         "connector": "smarthost", "reply": "451", "retry_in": "60s"}))  # fmt: skip
        elif n % 10 == 5:
            rows.append((when, catalog.LEASES_RELEASED, {"count": 1, "why": "test"}))
        else:
            rows.append((when, catalog.SENT, {"queue_id": f"Q{n % 3}", "recipient": "a@b",
                         "connector": "postoffice", "reply": "250", "delays": "1/1",
                         "attempts": 1}))  # fmt: skip
    fill(tmp_path, rows)
    with reader(tmp_path) as r:
        everything = r.query(limit=0)
        assert len(everything) == 100
        assert [e["ts"] for e in everything] == sorted(e["ts"] for e in everything)

        last = r.query(limit=5)
        assert [e["ts"] for e in last] == [base + n * 60 for n in range(95, 100)]

        deferred = r.query(ids=[2400], limit=0)
        assert len(deferred) == 10 and {e["id"] for e in deferred} == {2400}

        two_ids = r.query(ids=[2400, 4000], limit=3)
        assert [e["ts"] for e in two_ids] == [base + 85 * 60, base + 90 * 60, base + 95 * 60]

        queue = r.query(categories=["Queue"], limit=0)
        assert len(queue) == 10 and {e["id"] for e in queue} == {4000}
        assert len(r.query(categories=["Queue", "Interchange"], limit=0)) == 20

        window = r.query(since=base + 10 * 60, until=base + 19 * 60, limit=0)
        assert [e["ts"] for e in window] == [base + n * 60 for n in range(10, 20)]

        q1 = r.query(queue_id="Q1", limit=0)
        assert len(q1) == sum(1 for n in range(100) if n % 10 != 5 and n % 3 == 1)
        assert {e["queue_id"] for e in q1} == {"Q1"}

        combined = r.query(queue_id="Q1", ids=[2400], since=base + 30 * 60, limit=0)
        assert [e["ts"] for e in combined] == [base + 40 * 60, base + 70 * 60]

        both = r.query(ids=[2448, 2400], categories=["Interchange"], limit=0)
        assert {e["id"] for e in both} == {2400}

        after = r.query(after_rowid=95, limit=0)
        assert [e["rowid"] for e in after] == [96, 97, 98, 99, 100]
        paged = r.query(after_rowid=10, ids=[2400], limit=2)
        assert [e["rowid"] for e in paged] == [11, 21]  # the first ones after it, oldest first

        snapshot = r.query(limit=0, upto_rowid=50)
        assert len(snapshot) == 50


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "events_ts"),
        ({"since": 1.0}, "events_ts"),
        ({"ids": [2448], "since": 1.0}, "events_event"),
        ({"ids": [2448, 2400], "since": 1.0}, "events_event"),
        ({"categories": ["Queue"], "since": 1.0, "until": 2.0}, "events_category"),
        ({"categories": ["Queue", "Sent"]}, "events_category"),
        ({"queue_id": "Q1", "since": 1.0}, "events_queue"),
        ({"queue_id": "Q1", "ids": [2448], "categories": ["Sent"]}, "events_queue"),
        ({"ids": [2448], "categories": ["Sent"]}, "events_event"),
        ({"after_rowid": 5, "ids": [2448], "queue_id": "Q1"}, "INTEGER PRIMARY KEY"),
    ],
)
def test_every_filter_is_an_index_search(
    tmp_path: Path, filters: dict[str, Any], index: str
) -> None:
    fill(tmp_path, [(1.0, catalog.LEASES_RELEASED, {"count": 1, "why": "x"})])
    sql, params = build_query(**filters)
    with reader(tmp_path) as r:
        plan = r.explain(sql, params)
    assert any(index in step for step in plan), plan
    scans = [s for s in plan if s.startswith("SCAN events") and "USING INDEX" not in s]
    assert not scans, plan
    if not filters.get("ids", [0])[1:] and not filters.get("categories", [0])[1:]:
        assert not any("TEMP B-TREE" in s for s in plan), plan  # the index gives the order


def test_store_is_bounded_oldest_pruned_first(tmp_path: Path, log: EventLog) -> None:
    writer = EventStoreWriter(
        store_path(tmp_path), EventStoreSink(), max_events=100, batch=30, prune_chunk=40
    )
    log.add_sink(writer.sink)
    running = Running(writer).start()
    try:
        for n in range(1000):
            sent(log, f"Q{n}", n)
    finally:
        running.stop()
    with reader(tmp_path) as r:
        kept = r.query(limit=0)
    assert len(kept) == 100
    assert kept[-1]["queue_id"] == "Q999"
    assert [e["queue_id"] for e in kept] == [f"Q{n}" for n in range(1000 - len(kept), 1000)]


def test_pruning_a_large_excess_goes_in_chunks(tmp_path: Path) -> None:
    fill(tmp_path, [(float(n), catalog.LEASES_RELEASED, {"count": n, "why": "x"})
                    for n in range(1000)])  # fmt: skip
    sink = EventStoreSink()
    writer = EventStoreWriter(store_path(tmp_path), sink, max_events=10, prune_chunk=300)
    sink.queue.append((catalog.LEASES_RELEASED, {"count": 1000, "why": "x"}, 1000.0))
    writer.flush()
    assert stored_count(tmp_path) == 1001 - 300  # one chunk per transaction
    for _ in range(4):
        sink.queue.append((catalog.LEASES_RELEASED, {"count": 0, "why": "x"}, 1001.0))
        writer.flush()
    assert stored_count(tmp_path) == 10


def test_a_full_sink_drops_instead_of_blocking_and_the_loss_is_reported(
    tmp_path: Path, log: EventLog
) -> None:
    sink = EventStoreSink(capacity=10)
    log.add_sink(sink)
    writer = EventStoreWriter(store_path(tmp_path), sink, events=log)
    started = time.monotonic()
    for n in range(5000):  # no writer running: nothing drains the queue
        sent(log, f"Q{n}", n)
    assert time.monotonic() - started < 5.0
    assert len(sink.queue) == 10
    assert sink.dropped == 4990
    running = Running(writer).start()
    try:
        wait_for(lambda: stored_count(tmp_path) >= 11, 5, what="the loss report")
    finally:
        running.stop()
    with reader(tmp_path) as r:
        [report] = r.query(ids=[catalog.EVENTS_LOST.id])
        kept = r.query(ids=[2448], limit=0)
    assert [e["queue_id"] for e in kept] == [f"Q{n}" for n in range(10)]
    assert report["fields"]["count"] == 4990
    assert "dropped because its queue was full" in report["message"]


def test_emit_never_raises_and_odd_fields_are_stored(tmp_path: Path, log: EventLog) -> None:
    writer = attach_event_store(log, tmp_path, 100)

    class Weird:
        def __str__(self) -> str:
            return "weird\x00value"

    circular: list[Any] = []
    circular.append(circular)
    log.emit(catalog.LEASES_RELEASED, count=Weird(), why=b"bytes")
    log.emit(catalog.LEASES_RELEASED, count=circular, why="circular")  # not JSON-able at all
    log.emit(catalog.LEASES_RELEASED, count=1)  # a missing field stays visible
    writer.flush()
    with reader(tmp_path) as r:
        stored = r.query(limit=0)
    assert [e["fields"].get("why") for e in stored] == ["b'bytes'", None]
    assert "weird\\x00value" in stored[0]["message"]
    assert stored[1]["message"] == "released 1 lease(s) {why}; their recipients will be retried"
    assert writer.failed == 1


def test_reader_never_creates_the_store(tmp_path: Path) -> None:
    assert EventReader.open(store_path(tmp_path / "log")) is None
    assert not (tmp_path / "log").exists()
