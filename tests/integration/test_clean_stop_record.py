"""queue/cleanstop.py on a real queue file, and the lock holder's Host writing and removing
its record (issue 14.6): the identity changes with any write and not with a reader's empty
WAL, and failing to write or remove the record is event 1056, never a failed start or stop.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mailgate.config import parse_config
from mailgate.observe import catalog
from mailgate.observe.events import EventLog, JsonLinesFormatter
from mailgate.queue import cleanstop
from mailgate.queue.sqlite import SqliteBackend
from mailgate.service.host import Host
from mailgate.service.part import Phase
from tests.integration.test_host import Recorded
from tests.unit.test_events import ListHandler


def owner_host(data_dir: Path) -> tuple[Host, ListHandler]:
    config = parse_config({"service": {"data_dir": str(data_dir), "stop_timeout": "5s"}})
    sink = ListHandler()
    sink.setFormatter(JsonLinesFormatter())
    events = EventLog()
    events.add_sink(sink)
    host = Host(config, events, owner=True)
    host.parts = [Recorded("queue", [], {Phase.COMMIT: "commit"})]
    return host, sink


def failures(sink: ListHandler) -> list[dict[str, object]]:
    events = [json.loads(line) for line in sink.lines]
    return [e["fields"] for e in events if e["id"] == catalog.CLEAN_STOP_NOT_RECORDED.id]


def test_the_identity_follows_writes_and_not_a_readers_empty_wal(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    assert not cleanstop.unchanged(backend), "no record yet"
    assert cleanstop.record(backend) is None and cleanstop.unchanged(backend)
    reader = backend.connect_read_only()
    assert reader is not None
    reader.execute("SELECT COUNT(*) FROM messages").fetchone()
    reader.close()
    assert cleanstop.unchanged(backend), "a reader changes nothing"
    db = sqlite3.connect(backend.path)
    db.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    db.commit()
    db.close()
    assert not cleanstop.unchanged(backend), "a write does"
    assert cleanstop.forget(backend) is None and not cleanstop.unchanged(backend)
    assert cleanstop.forget(backend) is None, "nothing to remove is no failure"


def test_a_clean_stop_of_the_lock_holder_records_and_its_start_removes(tmp_path: Path) -> None:
    host, sink = owner_host(tmp_path)
    host.start()
    assert host.stop() == []
    backend = SqliteBackend(tmp_path / "queue" / "queue.db")
    assert cleanstop.unchanged(backend) and failures(sink) == []
    again, _ = owner_host(tmp_path)
    again.start()
    try:
        assert not Path(cleanstop.record_path(backend)).exists()
    finally:
        again.stop()


def test_failing_to_write_or_remove_the_record_is_event_1056_not_a_failure(
    tmp_path: Path,
) -> None:
    record = Path(cleanstop.record_path(SqliteBackend(tmp_path / "queue" / "queue.db")))
    record.parent.mkdir(parents=True)
    (record.parent / (record.name + ".tmp")).mkdir()  # the record cannot be written
    host, sink = owner_host(tmp_path)
    host.start()
    assert host.stop() == []
    [written] = failures(sink)
    assert written["what"] == "write" and written["path"] == str(record)
    assert not record.exists()

    record.mkdir()
    (record / "x").write_text("")  # nor removed
    host, sink = owner_host(tmp_path)
    host.start()
    host.stop()
    assert [f["what"] for f in failures(sink)] == ["remove", "write"]
