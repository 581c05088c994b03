"""Master and worker processes: a worker killed or wedged under load is replaced, its leased
work is delivered by the replacement, nothing is lost and nothing duplicated."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"
CONFIG = DEFAULT_CONFIG + '\n[supervise]\nworker_silence = "3s"\n'


def workers(mg: Mailgate) -> dict[str, dict]:  # type: ignore[type-arg]
    result = mg.cli("ctl", "status", "--json")
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)["processes"]}


def started(tmp_path: Path) -> Mailgate:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    return mg


def test_status_shows_every_process_and_thread_with_cpu(tmp_path: Path) -> None:
    mg = started(tmp_path)
    try:
        procs = workers(mg)
        assert {"master", "receive-1", "interchange-1"} <= set(procs)
        interchange = procs["interchange-1"]
        names = {t["name"] for t in interchange["threads"]}
        assert {"postoffice-1", "postoffice-2", "scheduler", "commit", "pickup"} <= names
        assert all(t["cpu_seconds"] is not None for t in interchange["threads"] if t["alive"])
        assert interchange["pid"] != procs["master"]["pid"]
    finally:
        mg.close()


def test_interchange_worker_killed_under_load_is_replaced(tmp_path: Path) -> None:
    mg = started(tmp_path)
    try:
        accepted: list[str] = []
        sender = threading.Thread(
            target=lambda: accepted.extend(send_many(mg.port, 600, ALICE, clients=4))
        )
        sender.start()
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) > 50, 30, what="load")
        old = workers(mg)["interchange-1"]["pid"]
        os.kill(old, signal.SIGKILL)
        sender.join(120)
        assert len(accepted) > 100, "the load ran"
        exited = mg.wait_events(5011)
        assert exited[0]["fields"]["worker"] == "interchange-1"
        assert "SIGKILL" in exited[0]["fields"]["how"]
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE", timeout=60)
        wait_for(
            lambda: workers(mg)["interchange-1"].get("pid") not in (None, old), 15,
            what="a new interchange process",
        )  # fmt: skip
        wait_for(mg.healthy, 20, what="healthy again")
    finally:
        mg.close()


def test_receive_worker_killed_under_load_loses_no_accepted_message(tmp_path: Path) -> None:
    mg = started(tmp_path)
    try:
        accepted: list[str] = []
        errors: list[BaseException] = []

        def load() -> None:
            for round_ in range(3):  # sessions cut by the kill are retried by the next round
                try:
                    accepted.extend(send_many(mg.port, 150, ALICE, prefix=f"r{round_}-"))
                except BaseException as exc:  # a killed session: expected for some
                    errors.append(exc)

        sender = threading.Thread(target=load)
        sender.start()
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) > 30, 30, what="load")
        os.kill(workers(mg)["receive-1"]["pid"], signal.SIGKILL)
        sender.join(180)
        assert len(accepted) > 100, "the load ran"
        mg.wait_events(5011)
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE", timeout=60)
        wait_for(mg.healthy, 20, what="healthy again")
    finally:
        mg.close()


def test_wedged_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    mg = started(tmp_path)
    try:
        old = workers(mg)["interchange-1"]["pid"]
        os.kill(old, signal.SIGSTOP)  # frozen: it cannot even report to the master
        killed = mg.wait_events(5012, timeout=15)
        assert killed[0]["fields"]["worker"] == "interchange-1"
        wait_for(lambda: workers(mg)["interchange-1"]["pid"] != old, 20, what="replacement")
        accepted = send_many(mg.port, 20, ALICE, clients=2)
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
    finally:
        mg.close()


def test_master_killed_takes_its_workers_along(tmp_path: Path) -> None:
    mg = started(tmp_path)
    try:
        pids = [p["pid"] for n, p in workers(mg).items() if n != "master"]
        mg.kill()
        wait_for(lambda: not any(_alive(pid) for pid in pids), 10, what="workers gone")
        mg.start()  # the port and the data directory are free again
        assert send_many(mg.port, 3, ALICE, clients=1)
    finally:
        mg.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"
