"""Issue 4 end to end: every injected fault ends with the queue drained, the threads back,
the right events, nothing lost and nothing duplicated; control answers and stop works.
(Rows of DESIGN.md section 5 have modules of their own: test_kb_q*.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.control.server import request, socket_path
from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import HangingServer, Sink

ALICE = "alice@po1.net1.example.test"

FAST = """
[queue]
retry_min = "1s"
retry_max = "2s"

[supervise]
stall_after = "2s"
stall_grace = "2s"
"""


def started(tmp_path: Path, faults: str, extra: str = "") -> Mailgate:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST + extra)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(env={"MAILGATE_FAULTS": faults} if faults else None)
    return mg


@pytest.fixture
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mailgate]:
    mg = started(tmp_path, request.param)
    try:
        yield mg
    finally:
        mg.close()


def ctl(mg: Mailgate, *args: str) -> subprocess.CompletedProcess[str]:
    return mg.cli("ctl", *args)


def status(mg: Mailgate) -> dict:  # type: ignore[type-arg]
    result = ctl(mg, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def all_threads(state: dict) -> list[dict]:  # type: ignore[type-arg]
    return [t for process in state["processes"] for t in process["threads"]]


def interchange_alive(mg: Mailgate) -> int:
    threads = all_threads(status(mg))
    return sum(1 for t in threads if t["role"] == "interchange" and t["alive"])


@pytest.mark.parametrize(
    ("faulty", "event"),
    [
        ("interchange.deliver=raise:3", 2450),  # raises mid-delivery
        ("interchange.loop=exit:2", 5001),  # ends silently
        ("wakeup.wait=raise:3", 2380),  # raises inside a critical section holding a lock
    ],
    indirect=["faulty"],
)
def test_fault_is_survived(faulty: Mailgate, event: int) -> None:
    accepted = send_many(faulty.port, 120, ALICE)
    assert len(accepted) == 120
    assert_exactly_once(faulty, accepted, "NET1", "PO1", "ALICE")
    assert wait_for(lambda: faulty.events(event), 10, what=f"event {event}")
    wait_for(lambda: interchange_alive(faulty) == 2, 15, what="both interchange threads back")
    assert status(faulty)["queues"]["postoffice"]["length"] == 0
    assert not faulty.events(10003), "no thread used up its budget"


def test_control_answers_and_stop_works_with_every_worker_wedged(tmp_path: Path) -> None:
    config = DEFAULT_CONFIG.replace('stop_timeout = "10s"', 'stop_timeout = "3s"')
    mg = Mailgate(
        tmp_path, config=config + FAST.replace('stall_grace = "2s"', 'stall_grace = "60s"')
    )
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(env={"MAILGATE_FAULTS": "interchange.deliver=hang"})
    try:
        send_many(mg.port, 10, ALICE, clients=2)
        wait_for(
            lambda: all(
                t["state"] in ("busy", "stalled") for t in all_threads(status(mg))
                if t["role"] == "interchange"
            ),
            10, what="every interchange thread wedged",
        )  # fmt: skip
        for _ in range(3):
            # The service's own answer time (the CLI adds its interpreter start-up, ~0.3 s).
            began = time.monotonic()
            state = request(socket_path(mg.data_dir), "status", timeout=1.0)
            assert time.monotonic() - began < 1.0, "control answers within 1 s"
            assert state["queues"]["postoffice"]["active"] > 0
        wait_for(lambda: not status(mg)["healthy"], 10, what="wedged threads reported unhealthy")
        assert mg.proc is not None
        began = time.monotonic()
        mg.proc.send_signal(signal.SIGTERM)
        code = mg.proc.wait(10)
        assert time.monotonic() - began < 3.0 + 2.0, "stopped within the stop deadline"
        assert code != 0, "threads left running: not a clean stop"
        incomplete = mg.events(1005)
        assert any("postoffice-1" in e["fields"]["threads"] for e in incomplete), incomplete
    finally:
        mg.close()


def test_reload_applies_routes_and_keeps_running_on_a_bad_file(tmp_path: Path) -> None:
    mg = started(tmp_path, "")
    try:
        assert mg.proc is not None
        mg.config_path.write_text(DEFAULT_CONFIG + "\n[smtp]\nmax_recipients = -5\n")
        mg.proc.send_signal(signal.SIGHUP)
        invalid = wait_for(lambda: mg.events(1100), 10, what="ConfigInvalid after SIGHUP")
        assert "smtp.max_recipients" in invalid[0]["message"]
        state = status(mg)
        assert state["healthy"], state["reasons"]
        mg.config_path.write_text(DEFAULT_CONFIG + '\n[[route]]\nmatch = "*@*.example.test"\n'
                                  'connector = "postoffice"\n')  # fmt: skip
        assert ctl(mg, "reload").returncode == 0
        wait_for(lambda: mg.events(1101), 10, what="ConfigReloaded")
    finally:
        mg.close()


def test_hung_smarthost_is_reported_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    hanging = HangingServer(port)
    extra = '\n[smarthost]\nthreads = 1\ntimeout = "30s"\ndown_for = "1s"\n'
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST.replace('"2s"', '"3s"', 1) + extra)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{port}")
    sink = Sink(port)
    try:
        began = time.monotonic()
        send_many(mg.port, 3, "far@elsewhere.org", clients=1)
        stalled = wait_for(lambda: mg.events(5006), 20, what="ConnectorStalled")
        assert time.monotonic() - began < 2 * 3.0 + 2.0, "warned within 2x the threshold"
        assert stalled[0]["fields"]["connector"] == "smarthost"
        assert "smarthost-1=" in stalled[0]["fields"]["threads"]
        assert mg.wait_events(5003), "the hung thread itself was reported, with its stack"
        hanging.stop()
        sink.start()
        sink.wait_messages(3, timeout=30)
        wait_for(lambda: mg.events(5007), 20, what="ConnectorRecovered")
    finally:
        mg.close()
        if not hanging._stop.is_set():
            hanging.stop()
        sink.stop()
