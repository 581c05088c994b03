"""Q151431: the service we replace stopped without an error.

DESIGN §5 row 4: every exit path logs the reason; non-zero exit on failure. Here a
worker process fails inside its start (a directory sits where its socket goes), a
critical thread keeps failing until the service gives up, and an operator sends a
second signal during a slow stop. Each way out must leave its reason in events.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import time
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"
MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]


def test_a_worker_whose_start_fails_names_its_reason(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    obstacle = mg.data_dir / "run" / "wakeup.sock"  # where the interchange worker binds
    obstacle.mkdir(parents=True)
    mg.start(wait=False)
    try:
        exited = mg.wait_events(5011, timeout=30)
        assert exited[0]["fields"]["worker"] == "interchange-1"
        # The reason is in the log: the worker's own account, and the master's.
        text = json.dumps([mg.events(5020), exited])
        assert "Is a directory" in text and "wakeup.sock" in text, text
        assert "Is a directory" in exited[0]["fields"]["how"], exited[0]["fields"]
        # Once the obstacle is gone the restarted worker starts and the service serves.
        shutil.rmtree(obstacle)
        mg.wait_ready(timeout=40)
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            assert client.sendmail("s@example.org", [ALICE], "Subject: t\r\n\r\nhi\r\n") == {}
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="delivery")
    finally:
        mg.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_critical_thread_that_keeps_failing_ends_the_service_with_1002(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    config = DEFAULT_CONFIG + "\n[supervise]\nmax_restarts = 1\n"
    mg = Mailgate(tmp_path, config=config)
    mg.start(*mode, wait=False, env={"MAILGATE_FAULTS": "commit.loop=raise"})
    try:
        assert mg.proc is not None
        assert mg.proc.wait(90) == 1
        failed = mg.events(1002)
        assert failed, "no ServiceFailed event"
        reason = failed[-1]["fields"]["reason"]
        assert "commit" in reason, reason  # the thread that failed is named, in both modes
        # A worker that fails for good says how its last run ended (a worker once died
        # without last words under load, and neither 5013 nor 1002 said how).
        assert bool(mg.events(5013)) is (mode == ()), "5013 when, and only when, workers run"
        for event in mg.events(5013):
            assert event["fields"]["how"].startswith(("exit status", "signal")), event
            assert event["fields"]["how"] in reason, (event, reason)
        assert mg.events(10003), "the thread's own failure is in the log too"
        # Regression: the threads blocked on the dead committer's futures (postoffice,
        # scheduler) held the stop until its 10 s deadline and were named by event 1005.
        # The committer's waiting jobs fail once it has failed for good, and they end.
        assert not mg.events(1005), mg.events(1005)
        assert not mg.events(1001), "a failure is not a clean stop"
    finally:
        mg.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_second_signal_exits_at_once_with_an_event(tmp_path: Path, mode: tuple[str, ...]) -> None:
    # A delivery that hangs makes the stop wait out its 30 s deadline.
    config = DEFAULT_CONFIG.replace('stop_timeout = "10s"', 'stop_timeout = "30s"')
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(*mode, env={"MAILGATE_FAULTS": "interchange.deliver=hang"})
    try:
        assert mg.proc is not None
        status = json.loads(mg.cli("ctl", "status", "--json").stdout)
        pids = [p["pid"] for p in status["processes"] if p["pid"] != mg.proc.pid]
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            client.sendmail("s@example.org", [ALICE], "Subject: t\r\n\r\nhi\r\n")
        wait_for(
            lambda: any(
                t["state"] == "busy" and t["role"] == "interchange"
                for p in json.loads(mg.cli("ctl", "status", "--json").stdout)["processes"]
                for t in p["threads"]
            ),
            10, what="a delivery thread hanging",
        )  # fmt: skip
        mg.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not _accepts(mg.port), 10, what="the stop under way (SMTP closed)")
        began = time.monotonic()
        mg.proc.send_signal(signal.SIGTERM)
        assert mg.proc.wait(10) == 1
        assert time.monotonic() - began < 3.0, "the second signal ends it at once"
        failed = mg.events(1002)
        assert failed and "second SIGTERM" in failed[-1]["fields"]["reason"], failed
        wait_for(lambda: not any(_alive(pid) for pid in pids), 10, what="workers gone too")
    finally:
        mg.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"
