"""Issue "a day of administration", point 9: flush works once the destination is back.

After a smarthost outage the connector marks the smarthost down for `down_for`; an
administrator's `mailgate queue retry` or `mailgate ctl wake` clears that marking and the
mail goes at once (Postfix's `postqueue -f` clears its dead-destination cache likewise).
When mailgate itself aborts a stalled connection, event 2460 says so; and a connector with
nothing due is never reported stalled (5006).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.load import send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import HangingServer, Sink

FRIEND = "friend@elsewhere.org"


def config(port: int, *, retry: str = "1h", stall_after: str = "120s") -> str:
    return DEFAULT_CONFIG + (
        f'\n[queue]\nretry_min = "{retry}"\nretry_max = "{retry}"\n'
        f'\n[smarthost]\nhost = "127.0.0.1"\nport = {port}\nthreads = 1\ndown_for = "1h"\n'
        'timeout = "60s"\n'
        f'\n[supervise]\nstall_after = "{stall_after}"\nstall_grace = "60s"\n'
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_queue_retry_after_an_outage_delivers_at_once(tmp_path: Path) -> None:
    port = free_port()
    sink = Sink(port)  # the smarthost is down: nothing listens on its port yet
    mg = Mailgate(tmp_path, config=config(port))
    mg.start()
    try:
        assert len(send_many(mg.port, 10, FRIEND, clients=2)) == 10
        mg.wait_events(2400, count=10, timeout=20)
        assert len(mg.events(2460)) == 1, "marked down once, then deferred at once"
        sink.start()
        began = time.monotonic()
        assert "10 recipient(s) retried" in ok(mg.cli("queue", "retry", "--all"))
        sink.wait_messages(10, timeout=15)
        assert time.monotonic() - began < 15, "at once, not after a backoff of an hour"
        assert mg.wait_events(2462)[0]["fields"]["connector"] == "smarthost"
        mg.wait_events(2448, count=10)
    finally:
        mg.close()
        sink.stop()


def test_ctl_wake_clears_the_down_marking(tmp_path: Path) -> None:
    port = free_port()
    sink = Sink(port)
    mg = Mailgate(tmp_path, config=config(port, retry="1s"))
    mg.start("--single-process")
    try:
        send_many(mg.port, 1, FRIEND, clients=1)
        mg.wait_events(2400, count=2, timeout=20)  # retried after 1 s: deferred at once (down)
        sink.start()
        out = ok(mg.cli("ctl", "wake", "smarthost"))
        assert "smarthost" in out
        sink.wait_messages(1, timeout=10)
        assert mg.wait_events(2462)[0]["fields"]["by"] == "mailgate ctl wake"
    finally:
        mg.close()
        sink.stop()


def hung_and_aborted(tmp_path: Path) -> tuple[Mailgate, HangingServer]:
    """A smarthost that accepts and never greets: the thread stalls (2 s), the supervisor
    aborts its connection; the recipient is deferred for an hour, nothing is due."""
    hanging = HangingServer(free_port())
    mg = Mailgate(tmp_path, config=config(hanging.port, stall_after="2s"))
    mg.start("--single-process")
    send_many(mg.port, 1, FRIEND, clients=1)
    mg.wait_events(5003, timeout=20)
    mg.wait_events(2460, timeout=20)
    return mg, hanging


def test_a_stall_abort_is_named_in_smarthost_unreachable(tmp_path: Path) -> None:
    mg, hanging = hung_and_aborted(tmp_path)
    try:
        [event] = mg.events(2460)
        assert "mailgate aborted the stalled connection" in event["fields"]["error"]
        assert "mailgate aborted the stalled connection" in event["message"]
    finally:
        mg.close()
        hanging.stop()


def scheduler(mg: Mailgate) -> dict[str, Any]:
    threads = json.loads(ok(mg.cli("ctl", "threads", "--json")))
    return next(t for t in threads if t["name"] == "scheduler")  # type: ignore[no-any-return]


def test_no_connector_stall_with_nothing_due(tmp_path: Path) -> None:
    mg, hanging = hung_and_aborted(tmp_path)
    try:
        wait_for(
            lambda: any(e["fields"]["connector"] == "smarthost" for e in mg.events(2400)),
            20, what="the recipient deferred for an hour after the abort",
        )  # fmt: skip
        # The scheduler checks for stalls every tick; let it run past 2x stall_after with
        # nothing due.
        ticks = scheduler(mg)["jobs_done"]
        wait_for(lambda: scheduler(mg)["jobs_done"] >= ticks + 6, 20, 0.2, "6 scheduler ticks")
        false_alarms = [e for e in mg.events(5006) if e["fields"]["due"] == 0]
        assert false_alarms == [], false_alarms
    finally:
        mg.close()
        hanging.stop()
