"""master/surface.py's MasterSurface over workers that answer in-process: each worker is its
own real LocalSurface and command table (what a worker's channel-in runs), reached through a
stand-in for the pipe that can also be wedged or dead. What the master relays to whom, what
it answers when a worker does not, and how it merges the workers' heartbeats: threads,
live connector counts, counters that never go back when a worker is replaced.
(test_control_surface.py has the shared status shape and the master with no worker.)"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailgate.config import parse_config
from mailgate.control.local import LocalSurface
from mailgate.control.surface import command_table
from mailgate.interchange.inflight import InFlight
from mailgate.interchange.state import Connectors
from mailgate.master.channel import ChannelPart, Outbox
from mailgate.master.processes import WorkerSpec
from mailgate.master.surface import MasterSurface
from mailgate.observe.catalog import Category, Level
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueReader
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.supervisor import Supervisor


def process() -> SimpleNamespace:
    events = EventLog()
    return SimpleNamespace(
        supervisor=Supervisor(events),
        events=events,
        started_at=time.time(),
        stopping=False,
        health=lambda: [],
        reload_state=lambda: {"last_reload_ok": True},
        request_stop=lambda reason: None,
        config=parse_config({}),  # the node view of status reads [queue] node_timeout
    )


class Worker:
    """A worker as the master sees one (master/processes.py's WorkerProcess): its spec,
    pid, liveness, last heartbeat, and `call`, here a JSON round trip to its own surface."""

    def __init__(
        self, role: str, name: str, surface: LocalSurface, counters: Counters, pid: int
    ) -> None:
        self.spec = WorkerSpec(role, name)
        self.surface = surface
        self.counters = counters  # what its stages count, as its surface reports them
        self.pid = pid
        self.alive = True
        self.wedged = False
        self.restarts = 0
        self.failed = False
        self.last_heard = time.time()
        self.calls: list[str] = []
        self.status: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def beat(self) -> None:
        """Its heartbeat, as its channel-out thread builds it."""
        part = ChannelPart(Outbox(io.BytesIO()), self.surface, self.spec.role, print, fd=0)
        self.status = json.loads(json.dumps({**part.heartbeat(), "pid": self.pid}))
        self.last_heard = time.time()

    def call(self, command: str, args: dict[str, Any], timeout: float = 1.0) -> Any:
        self.calls.append(command)
        if self.wedged:
            raise TimeoutError(f"worker {self.name} is not reading its commands")
        try:
            answer = command_table(self.surface)[command](json.loads(json.dumps(args)))
        except Exception as exc:  # the channel answers an error, the caller raises it
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        return json.loads(json.dumps(answer))


def delivery() -> SimpleNamespace:
    return SimpleNamespace(
        connectors=Connectors(["postoffice", "smarthost"]),
        wakeup=Wakeup(),
        in_flight=InFlight(),
        interchange_threads=[],
        clear_down=lambda names, by: [n for n in names if n == "smarthost"],
        destination_state=lambda: {},
    )


@pytest.fixture
def backend(tmp_path: Path) -> SqliteBackend:
    made = SqliteBackend(tmp_path / "queue.db")
    made.initialize()
    return made


def worker(backend: SqliteBackend, role: str, name: str, pid: int) -> Worker:
    counters = Counters()
    surface = LocalSurface(
        process(),
        lambda: QueueReader(backend.connect()),
        counters,
        delivery() if role == "interchange" else None,  # type: ignore[arg-type]
        role,
    )
    made = Worker(role, name, surface, counters, pid)
    made.beat()
    return made


def master(backend: SqliteBackend, *workers: Worker) -> MasterSurface:
    stand_in = SimpleNamespace(workers=list(workers), config=parse_config({}), backend=backend)
    return MasterSurface(process(), stand_in)  # type: ignore[arg-type]


def test_delivery_commands_go_to_the_interchange_worker_alone_and_answer_by_name(
    backend: SqliteBackend,
) -> None:
    receive = worker(backend, "receive", "receive-1", 101)
    interchange = worker(backend, "interchange", "interchange", 102)
    surface = master(backend, receive, interchange)
    assert surface.pause("smarthost") == {"interchange": {"paused": ["smarthost"]}}
    assert interchange.surface.delivery is not None
    assert interchange.surface.delivery.connectors["smarthost"].paused
    assert surface.resume(None) == {"interchange": {"resumed": ["postoffice", "smarthost"]}}
    assert surface.wake("smarthost", True, "test") == {
        "interchange": {"woken": ["smarthost"], "down_cleared": ["smarthost"]}
    }
    assert surface.refresh() == {"interchange": {"recycling": []}}
    assert receive.calls == [], "a receive worker delivers nothing: it is not asked"


def test_a_worker_that_does_not_answer_or_refuses_is_answered_for_and_the_others_still_answer(
    backend: SqliteBackend,
) -> None:
    one = worker(backend, "interchange", "interchange-1", 201)
    two = worker(backend, "interchange", "interchange-2", 202)
    dead = worker(backend, "interchange", "interchange-3", 203)
    one.wedged, dead.alive = True, False
    surface = master(backend, one, two, dead)
    answers = surface.pause("postoffice")
    assert answers == {
        "interchange-1": {"error": "worker interchange-1 is not reading its commands"},
        "interchange-2": {"paused": ["postoffice"]},
    }
    assert dead.calls == [], "a dead worker is not asked"
    refused = surface.pause("nope")
    assert set(refused) == {"interchange-1", "interchange-2"}
    assert "no connector 'nope'" in refused["interchange-2"]["error"]


def test_a_log_level_set_on_the_master_is_set_in_every_worker(backend: SqliteBackend) -> None:
    receive = worker(backend, "receive", "receive-1", 301)
    interchange = worker(backend, "interchange", "interchange", 302)
    surface = master(backend, receive, interchange)
    levels = surface.loglevel("Receive", "none")
    assert levels["Receive"] == "none"
    assert surface.process.events.level(Category.RECEIVE) is Level.NONE
    for each in (receive, interchange):
        assert each.surface.process.events.level(Category.RECEIVE) is Level.NONE, each.name
        assert each.calls == ["loglevel"]


def test_the_dump_holds_the_masters_stacks_and_each_workers_by_name(
    backend: SqliteBackend,
) -> None:
    surface = master(backend, worker(backend, "receive", "receive-1", 401))
    threads = [item["thread"] for item in surface.dump()]
    assert "MainThread" in threads, "the master's own"
    assert "receive-1/MainThread" in threads, "the worker's, named by worker"


def test_processes_list_the_master_then_each_worker_with_its_heartbeat(
    backend: SqliteBackend,
) -> None:
    receive = worker(backend, "receive", "receive-1", 501)
    interchange = worker(backend, "interchange", "interchange", 502)
    receive.status["threads"] = [{"name": "smtp", "native_id": None, "cpu_seconds": 1.5}]
    receive.last_heard -= 3
    receive.restarts = 2
    surface = master(backend, receive, interchange)
    listed = surface.processes()
    assert [(p["role"], p["name"]) for p in listed] == [
        ("master", "master"), ("receive", "receive-1"), ("interchange", "interchange"),
    ]  # fmt: skip
    assert listed[1]["pid"] == 501 and listed[1]["restarts"] == 2
    assert listed[1]["heard_age"] >= 3 and listed[1]["threads"][0]["cpu_seconds"] == 1.5
    assert [(t["process"], t["name"]) for t in surface.threads()][-1:] == [("receive-1", "smtp")]
    assert surface.status()["restarts"] == 2
    live = surface.live_connectors()
    assert set(live) == {"postoffice", "smarthost"} and live["postoffice"]["paused"] is False


def test_counters_add_up_over_workers_and_never_go_back_when_one_is_replaced(
    backend: SqliteBackend,
) -> None:
    one = worker(backend, "receive", "receive-1", 601)
    two = worker(backend, "receive", "receive-2", 602)
    received = 'mailgate_messages_received_total{source="smtp"}'
    one.counters.add(received, 5)
    one.counters.gauge("mailgate_smtp_sessions", 2)
    two.counters.add(received, 3)
    for each in (one, two):
        each.beat()
    surface = master(backend, one, two)
    first = surface.counters()
    assert first["counters"][received] == 8 and first["gauges"]["mailgate_smtp_sessions"] == 2
    one.status = {}  # restarting: no heartbeat from its next life yet
    assert surface.counters()["counters"][received] == 8, "its counts are kept meanwhile"
    life = worker(backend, "receive", "receive-1", 603)  # the new life
    one.surface, one.counters, one.pid = life.surface, life.counters, 603
    one.counters.add(received, 1)
    one.beat()
    merged = surface.counters()
    assert merged["counters"][received] == 9, "5 of the life that ended + 1 + 3"
    assert "mailgate_smtp_sessions" not in merged.get("gauges", {}), "its gauges died with it"
    assert surface.counters()["counters"][received] == 9, "counted once, however often read"
