"""`mailgate events` and `mailgate track` as real subprocesses.

The event stores are filled through the real sink and EventStoreWriter (from an
EventLog in this process, or by replaying a running service's events.jsonl with
the events' own times); the queue is filled by sending real mail through a
running `mailgate run` that relays to a scripted smarthost. `--follow` is read
live from a running `mailgate events` process.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog
from mailgate.observe.eventstore import store_path
from mailgate.observe.eventwriter import attach_event_store
from tests.support.eventstore import Running, replay
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

ALICE = "alice@po1.net1.example.test"
BOB = "bob@po1.net1.example.test"
FRIEND = "friend@elsewhere.org"
NOBODY = "nobody@elsewhere.org"

FAST = """
[queue]
retry_min = "1s"
retry_max = "2s"

[smarthost]
threads = 1
down_for = "1s"
"""


def sent_fields(queue_id: str, n: int = 0) -> dict[str, Any]:
    return {
        "queue_id": queue_id,
        "recipient": f"user{n}@example.test",
        "connector": "postoffice",
        "reply": "250 2.0.0 ok",
        "delays": "0.10/0.002",
        "attempts": 1,
    }


def record(when: float, event: catalog.EventType, fields: dict[str, Any]) -> dict[str, Any]:
    return {"id": event.id, "ts": when, "fields": fields}


def run_json(mg: Mailgate, *args: str) -> Any:
    result = mg.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- mailgate events -----------------------------------------------------------------------------
def test_events_filters_limit_and_forms(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    now = time.time()
    records = [record(now - 7200 + n, catalog.SENT, sent_fields(f"OLD{n}", n)) for n in range(5)]
    records += [record(now - 1800 + n, catalog.SENT, sent_fields(f"NEW{n}", n)) for n in range(3)]
    records.append(record(now - 60, catalog.LEASES_RELEASED, {"count": 2, "why": "test"}))
    records.append(
        record(now - 30, catalog.INVALID_RECIPIENT,
               {"recipient": "x@y\r\nforged", "client": "c [1.2.3.4]", "reply": "550"})
    )  # fmt: skip
    assert replay(records, mg.log_dir) == len(records)

    everything = run_json(mg, "events")
    assert len(everything) == 10
    assert [e["ts"] for e in everything] == sorted(e["ts"] for e in everything)
    assert {"time", "ts", "id", "name", "category", "severity", "message", "fields"} <= set(
        everything[0]
    )

    recent_sent = run_json(mg, "events", "--since", "1h", "--id", "2448")
    assert [e["queue_id"] for e in recent_sent] == ["NEW0", "NEW1", "NEW2"]
    assert [e["id"] for e in run_json(mg, "events", "--category", "queue")] == [4000]
    assert [e["id"] for e in run_json(mg, "events", "--id", "4000", "--id", "2371")] == [4000, 2371]
    assert [e["queue_id"] for e in run_json(mg, "events", "--queue-id", "OLD3")] == ["OLD3"]
    last_two = run_json(mg, "events", "--limit", "2")
    assert [e["id"] for e in last_two] == [4000, 2371]
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 3600))
    assert len(run_json(mg, "events", "--until", until)) == 5

    human = mg.cli("events", "--limit", "3")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == 3  # a CR/LF in a field cannot make a line of its own
    assert " info 2448 Sent: NEW2: delivered to <user2@example.test> via postoffice" in lines[0]
    assert lines[1].endswith(
        "warning 4000 Queue: released 2 lease(s) test; their recipients will be retried"
    )
    assert "x@y\\r\\nforged" in lines[2]

    bad = mg.cli("events", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_events_without_a_store_prints_nothing_and_creates_nothing(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    assert run_json(mg, "events") == []
    human = mg.cli("events")
    assert human.returncode == 0 and human.stdout == ""
    assert not mg.data_dir.exists()


class Follower:
    """A `mailgate events --follow` process whose output lines are read as they come."""

    def __init__(self, mg: Mailgate, *args: str) -> None:
        where = ("--config", str(mg.config_path), "--data-dir", str(mg.data_dir))
        self.proc = subprocess.Popen(
            mg.command("events", "--follow", *args, *where),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mg.env,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def take(self, count: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {got} of {count} lines; stderr: {self.stderr()}")
            with contextlib.suppress(queue.Empty):
                got.append(self.lines.get(timeout=min(left, 0.5)))
        return got

    def nothing_more(self) -> bool:
        return self.lines.empty()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(15)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def follower(mg: Mailgate, *args: str) -> Iterator[Follower]:
    f = Follower(mg, *args)
    try:
        yield f
    finally:
        f.close()


@contextlib.contextmanager
def live_store(log_dir: Path) -> Iterator[EventLog]:
    """An EventLog whose events a writer thread stores under log_dir while the block runs."""
    log = EventLog({c: Level.MAXIMUM for c in Category})
    running = Running(attach_event_store(log, log_dir, 10_000)).start()
    try:
        yield log
    finally:
        running.stop()
        log.close()


def test_follow_json_shows_new_events_live_from_a_store_created_later(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    with follower(mg, "--json") as f:
        # The store does not exist yet: the follower waits for it, and does not create it.
        assert not store_path(mg.log_dir).exists()
        with live_store(mg.log_dir) as log:
            for n in range(3):
                log.emit(catalog.SENT, **sent_fields(f"Q{n}", n))
            first = [json.loads(line) for line in f.take(3)]
            assert [e["queue_id"] for e in first] == ["Q0", "Q1", "Q2"]
            # Later events arrive while it runs, one JSON object per line.
            log.emit(catalog.LEASES_RELEASED, count=1, why="live")
            log.emit(catalog.SENT, **sent_fields("Q3", 3))
            later = [json.loads(line) for line in f.take(2)]
            assert [e["id"] for e in later] == [4000, 2448]
            assert later[0]["fields"] == {"count": 1, "why": "live"}
            assert later[0]["rowid"] < later[1]["rowid"]
        assert f.stop(signal.SIGTERM) == 0
        assert f.nothing_more()


def test_follow_applies_filters_and_starts_with_the_last_matches(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    now = time.time()
    old = [record(now - 600 + n, catalog.SENT, sent_fields(f"OLD{n}", n)) for n in range(150)]
    old.append(record(now - 1, catalog.LEASES_RELEASED, {"count": 1, "why": "old"}))
    replay(old, mg.log_dir)
    with live_store(mg.log_dir) as log, follower(mg, "--id", "2448", "--limit", "5") as f:
        initial = f.take(5)
        assert ["OLD145:" in initial[0], "OLD149:" in initial[-1]] == [True, True]
        log.emit(catalog.LEASES_RELEASED, count=1, why="not shown")
        log.emit(catalog.SENT, **sent_fields("LIVE", 1))
        [line] = f.take(1)
        assert " info 2448 Sent: LIVE: delivered to <user1@example.test>" in line
        assert f.stop(signal.SIGINT) == 0
        assert f.nothing_more()


def test_the_running_service_fills_its_event_store(mailgate: Mailgate) -> None:
    with smtplib.SMTP("127.0.0.1", mailgate.port, timeout=10) as client:
        client.sendmail("someone@example.org", [ALICE], b"Subject: stored\r\n\r\nhi\r\n")
    sent = wait_for(lambda: run_json(mailgate, "events", "--id", "2448"), 5, what="stored 2448")
    assert sent[0]["fields"]["recipient"] == ALICE
    received = run_json(mailgate, "events", "--queue-id", sent[0]["queue_id"], "--id", "3000")
    assert received[0]["fields"]["sender"] == "someone@example.org"


# --- mailgate track ------------------------------------------------------------------------------
@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture
def relay(tmp_path: Path, sink: Sink) -> Iterator[Mailgate]:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        yield mg
    finally:
        mg.close()


def track_json(mg: Mailgate, key: str, config: Path | None = None) -> Any:
    args = ["track", key, "--json"]
    if config is not None:
        args += ["--config", str(config)]
    result = subprocess.run(
        mg.command(*args) if config else mg.command(*args, "--config", str(mg.config_path),
                                                     "--data-dir", str(mg.data_dir)),
        capture_output=True, text=True, timeout=60, env=mg.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_track_shows_a_message_whole_life(relay: Mailgate, sink: Sink, tmp_path: Path) -> None:
    sink.fail("DATA", "451 4.3.0 try again later", times=1)
    sink.fail("RCPT", "550 5.1.1 no such user", address=NOBODY)
    body = b"Subject: tracked\r\nMessage-ID: <track-1@test>\r\n\r\nfollow me\r\n"
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.sendmail(ALICE, [BOB, FRIEND, NOBODY], body)
    [ndr] = wait_for(lambda: relay.events(2117), 20, what="the bounce (2117)")
    queue_id, bounce_id = ndr["fields"]["queue_id"], ndr["fields"]["bounce_id"]
    wait_for(
        lambda: [e for e in relay.events(2448) if e["fields"]["queue_id"] == bounce_id],
        10, what="the bounce delivered",
    )  # fmt: skip

    # The queue of the running service, and an event store holding its events.
    store_dir = tmp_path / "store"
    replay(relay.events(), store_dir)
    config = tmp_path / "track.toml"
    config.write_text(
        f'[queue]\npath = "{relay.data_dir / "queue" / "queue.db"}"\n[log]\ndir = "{store_dir}"\n'
    )

    [message] = track_json(relay, queue_id, config)
    assert message["queue_id"] == queue_id and message["in_queue"] is True
    assert message["sender"] == ALICE and message["message_id"] == "<track-1@test>"
    assert "[127.0.0.1]" in message["client"] and message["size"] > len(body)
    assert message["done_at"] is not None
    rcpts = {r["address"]: r for r in message["recipients"]}
    assert (rcpts[BOB]["connector"], rcpts[BOB]["state"]) == ("postoffice", "delivered")
    assert [a["disposition"] for a in rcpts[BOB]["history"]] == ["delivered"]
    friend = rcpts[FRIEND]
    assert (friend["connector"], friend["state"], friend["attempts"]) == (
        "smarthost",
        "delivered",
        2,
    )
    assert [a["disposition"] for a in friend["history"]] == ["deferred", "delivered"]
    retry, done = friend["history"]
    assert "451 4.3.0 try again later" in retry["reply"]
    assert 0 <= retry["delay"] < done["delay"] and done["duration"] >= 0
    assert rcpts[NOBODY]["state"] == "bounced"
    assert "550 5.1.1 no such user" in rcpts[NOBODY]["history"][0]["reply"]
    [bounce] = message["bounces"]
    assert bounce["bounce_id"] == bounce_id and bounce["kind"] == "bounce"
    assert bounce["recipient"] == ALICE and bounce["state"] == "delivered"
    assert NOBODY in bounce["failed"]
    ids = [e["id"] for e in message["events"]]
    assert {3000, 2400, 2448, 2401, 4003, 2117} <= set(ids)

    # The same message by Message-ID (with or without <>) and by an address.
    for key in ("<track-1@test>", "track-1@test", NOBODY, queue_id.lower()):
        assert [m["queue_id"] for m in track_json(relay, key, config)] == [queue_id]
    by_sender = track_json(relay, ALICE, config)
    assert queue_id in [m["queue_id"] for m in by_sender]

    # The bounce knows what it reports on.
    [report] = track_json(relay, bounce_id, config)
    assert report["bounce_of"] == queue_id and report["kind"] == "bounce"

    # From the service's own data dir (no replayed store): the queue alone links the bounce.
    [plain] = track_json(relay, queue_id)
    assert [b["bounce_id"] for b in plain["bounces"]] == [bounce_id]

    human = subprocess.run(
        relay.command("track", queue_id, "--config", str(config)),
        capture_output=True, text=True, timeout=60, env=relay.env,
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert text.splitlines()[0] == queue_id
    assert f"recipient  <{FRIEND}> via smarthost: delivered, 2 attempt(s)" in text
    assert "deferred after" in text and "451 4.3.0 try again later" in text
    assert f"bounce     {bounce_id} (bounce)" in text
    assert "events:" in text and " 2117 NDR: " in text

    missing = relay.cli("track", "nothing-like-this")
    assert missing.returncode == 1 and "no message matches" in missing.stderr
    assert relay.cli("track", "0000000000000FFFFFF", "--json").stdout.strip() == "[]"


def test_track_falls_back_to_the_event_store_for_a_purged_message(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    now = time.time()
    replay(
        [
            record(now - 5, catalog.MESSAGE_RECEIVED,
                   {"queue_id": "GONE1", "client": "h [10.0.0.9]", "sender": "s@x.test",
                    "recipients": 1, "size": 321, "message_id": "<gone@x>"}),
            record(now - 4, catalog.SENT, sent_fields("GONE1")),
            record(now - 3, catalog.SENT, sent_fields("OTHER")),
        ],
        mg.log_dir,
    )  # fmt: skip
    [message] = track_json(mg, "GONE1")
    assert message["in_queue"] is False
    assert (message["sender"], message["size"], message["client"]) == (
        "s@x.test",
        321,
        "h [10.0.0.9]",
    )
    assert [e["id"] for e in message["events"]] == [3000, 2448]
