"""Q140946: the service hung on multi-processor machines.

mailgate owes: concurrency stress tests, and stall detection. Under load from many
sessions on both receive processes and both delivery threads, every message arrives
once, nothing is reported stalled, and control answers throughout; a thread that does
hang, blocked or spinning, is detected (5003, with its kind and stack), abandoned and
replaced (5004). The two detection tests moved here from test_supervision.py with
their assertions (the last one now waits a heartbeat for the replacement to show).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mailgate.control.server import request, socket_path
from tests.support.kb import ALICE, status, threads
from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

FAST = """
[queue]
retry_min = "1s"
retry_max = "2s"

[supervise]
stall_after = "2s"
stall_grace = "2s"
"""
MAILBOXES = ("ALICE", "BOB", "CAROL", "DAVE")


def started(tmp_path: Path, faults: str) -> Mailgate:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(env={"MAILGATE_FAULTS": faults} if faults else None)
    return mg


def interchange_alive(mg: Mailgate) -> int:
    return sum(1 for t in threads(status(mg)) if t["role"] == "interchange" and t["alive"])


def test_concurrent_load_on_every_process_and_thread_neither_hangs_nor_loses(
    tmp_path: Path,
) -> None:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + "\n[processes]\nreceive = 2\n")
    for mbx in MAILBOXES:
        mg.add_mailbox(f"MS:NET1/PO1/{mbx}")
    mg.start()
    try:
        accepted: dict[str, list[str]] = {}
        latencies: list[float] = []
        done = threading.Event()

        def load(mbx: str) -> None:
            address = f"{mbx.lower()}@po1.net1.example.test"
            accepted[mbx] = send_many(mg.port, 500, address, clients=2, prefix=f"{mbx}-")

        def control() -> None:  # status must answer while every thread is busy
            while not done.is_set():
                began = time.monotonic()
                request(socket_path(mg.data_dir), "status", timeout=5.0)
                latencies.append(time.monotonic() - began)
                done.wait(0.05)

        senders = [threading.Thread(target=load, args=(mbx,)) for mbx in MAILBOXES]
        poller = threading.Thread(target=control)
        for thread in (*senders, poller):
            thread.start()
        for thread in senders:
            thread.join(300)
        for mbx in MAILBOXES:
            assert len(accepted[mbx]) == 500
            assert_exactly_once(mg, accepted[mbx], "NET1", "PO1", mbx)
        done.set()
        poller.join(10)
        assert latencies and max(latencies) < 1.0, f"slowest status answer {max(latencies):.2f}s"
        assert not mg.events(5003) and not mg.events(5006), "nothing was reported stalled"
        state = status(mg)
        assert state["healthy"], state["reasons"]
        assert {p["role"] for p in state["processes"]} >= {"receive", "interchange"}
        assert len([p for p in state["processes"] if p["role"] == "receive"]) == 2
    finally:
        mg.close()


def test_spinning_thread_is_detected_abandoned_and_replaced(tmp_path: Path) -> None:
    mg = started(tmp_path, "interchange.deliver=spin:1")
    try:
        accepted = send_many(mg.port, 40, ALICE, clients=2)
        stalled = wait_for(lambda: mg.events(5003), 15, what="ThreadStalled")
        assert stalled[0]["fields"]["kind"] == "spinning on CPU", stalled[0]["fields"]
        assert "faults.py" in stalled[0]["fields"]["stack"]
        wait_for(lambda: mg.events(5004), 15, what="ThreadAbandoned")
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
        # Worker heartbeats reach the master once a second: poll the merged view.
        wait_for(lambda: status(mg)["abandoned"] == 1, 10, what="abandoned count in status")
        # A replacement runs beside the abandoned thread (it too is seen a heartbeat late).
        wait_for(lambda: interchange_alive(mg) == 2, 10, 0.2, "the replacement thread")
    finally:
        mg.close()


def test_blocked_thread_is_detected_as_blocked(tmp_path: Path) -> None:
    mg = started(tmp_path, "interchange.deliver=hang:1")
    try:
        accepted = send_many(mg.port, 20, ALICE, clients=1)
        stalled = wait_for(lambda: mg.events(5003), 15, what="ThreadStalled")
        assert stalled[0]["fields"]["kind"] == "blocked"
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
    finally:
        mg.close()
