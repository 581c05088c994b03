"""The event catalog, level filtering, sinks, and the generated docs/events.md."""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

from mailgate.observe import catalog
from mailgate.observe.catalog import CATALOG, Category, Level
from mailgate.observe.events import EventLog, HumanFormatter, open_event_log
from mailgate.observe.reference import render_events

ROOT = Path(__file__).resolve().parents[2]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_catalog_keeps_the_old_connector_ids() -> None:
    for event_id, name in [(2448, "Sent"), (2375, "NoSuchMailbox"), (2380, "ThreadException"),
                           (10003, "ThreadFailedFatally"), (2371, "InvalidRecipient")]:  # fmt: skip
        assert CATALOG[event_id].name == name


def test_templates_only_use_simple_fields() -> None:
    for event in CATALOG.values():
        fields = [f for _, f, _, _ in string.Formatter().parse(event.template) if f]
        assert all(f.isidentifier() for f in fields), event
        assert event.meaning and event.action, event


def test_levels_filter_and_errors_always_pass() -> None:
    log = EventLog({Category.SENT: Level.MEDIUM})
    sink = ListHandler()
    sink.setFormatter(HumanFormatter())
    log.add_sink(sink)
    log.emit(catalog.SENT, queue_id="Q", recipient="r", connector="c", reply="250", delays="",
             attempts=1)  # fmt: skip
    assert sink.lines == [], "Sent is written at maximum only"
    log.set_level(Category.SENT, Level.MAXIMUM)
    log.emit(catalog.SENT, queue_id="Q", recipient="r", connector="c", reply="250", delays="",
             attempts=1)  # fmt: skip
    assert len(sink.lines) == 1 and " 2448 Sent: Q: delivered to <r>" in sink.lines[0]
    log.set_level(Category.SUPERVISION, Level.NONE)
    log.emit(catalog.THREAD_FAILED, thread="t", role="r", restarts=6, window=60)
    assert "10003" in sink.lines[-1], "critical events are written whatever the level"


def test_human_form_escapes_forged_lines_and_json_keeps_fields(tmp_path: Path) -> None:
    log = open_event_log(tmp_path, stderr=False)
    sink = ListHandler()
    sink.setFormatter(HumanFormatter())
    log.add_sink(sink)
    evil = "x@y\r\n2026-01-01 00:00:00 info 1000 Service: forged"
    log.emit(catalog.RELAY_DENIED, recipient=evil, client="c")
    log.close()
    assert "\n" not in sink.lines[0] and "\\r\\n" in sink.lines[0]
    record = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert record["id"] == 3002 and record["fields"]["recipient"] == evil
    assert record["category"] == "Routing" and record["severity"] == "warning"


def test_missing_fields_do_not_break_emitting(tmp_path: Path) -> None:
    log = open_event_log(tmp_path, stderr=False)
    log.emit(catalog.SERVICE_STOPPED)
    log.close()
    record = json.loads((tmp_path / "events.jsonl").read_text())
    assert record["message"] == "mailgate stopped: {reason}"


def test_events_reference_is_in_sync() -> None:
    checked_in = (ROOT / "docs" / "events.md").read_text()
    assert checked_in == render_events(), "run `mailgate docs --write`"


def test_the_json_log_rotates_and_keeps_its_backups(tmp_path: Path) -> None:
    log = open_event_log(tmp_path, stderr=False, max_bytes=2000, backups=2)
    for n in range(100):
        log.emit(catalog.RELAY_DENIED, recipient=f"r{n}@x", client="c")
    log.close()
    files = sorted(p.name for p in tmp_path.glob("events.jsonl*"))
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size < 2000 + 400 for p in tmp_path.glob("events.jsonl*"))
    newest = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(newest[-1])["fields"]["recipient"] == "r99@x"


def test_a_batch_holds_its_events_and_writes_them_when_it_ends(tmp_path: Path) -> None:
    """The master forwards what one read from a worker carried inside `batch()`: the file
    sink writes those events once, at the end (issue 14: a write per event before)."""
    log = open_event_log(tmp_path, stderr=False)
    path = tmp_path / "events.jsonl"
    log.emit(catalog.RELAY_DENIED, recipient="first@x", client="c")
    written = path.stat().st_size
    assert written > 0, "outside a batch an event is written at once"
    with log.batch():
        for n in range(5):
            log.emit(catalog.RELAY_DENIED, recipient=f"r{n}@x", client="c")
        assert path.stat().st_size == written, "held until the batch ends"
    lines = path.read_text().splitlines()
    assert [json.loads(line)["fields"]["recipient"] for line in lines[1:]] == [
        f"r{n}@x" for n in range(5)
    ]
    log.emit(catalog.RELAY_DENIED, recipient="after@x", client="c")
    assert json.loads(path.read_text().splitlines()[-1])["fields"]["recipient"] == "after@x"
    log.close()


def test_the_json_log_counts_an_existing_file_and_wide_characters_towards_rotation(
    tmp_path: Path,
) -> None:
    """The size that decides rotation is counted, not asked of the stream: from the file
    left by an earlier run, in bytes (UTF-8), not characters."""
    path = tmp_path / "events.jsonl"
    path.write_text("x" * 1500 + "\n")
    log = open_event_log(tmp_path, stderr=False, max_bytes=2000, backups=1)
    log.emit(catalog.RELAY_DENIED, recipient="é" * 300 + "@x", client="c")  # 600 bytes
    log.emit(catalog.RELAY_DENIED, recipient="next@x", client="c")
    log.close()
    rotated = (tmp_path / "events.jsonl.1").read_text().splitlines()
    assert rotated[0] == "x" * 1500 and len(rotated) == 2, "the old file and the wide event"
    newest = path.read_text().splitlines()
    assert [json.loads(line)["fields"]["recipient"] for line in newest] == ["next@x"]
