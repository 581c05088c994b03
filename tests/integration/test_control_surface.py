"""The control surface, for one process and for the master: one status shape, written once,
over a real queue file and a real supervisor (the process around them is a stand-in)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailgate.config import parse_config
from mailgate.control.local import LocalSurface
from mailgate.control.surface import STATES, ControlSurface, command_table
from mailgate.interchange.inflight import InFlight
from mailgate.interchange.state import Connectors
from mailgate.master.surface import MasterSurface
from mailgate.observe.catalog import Category
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueReader
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.supervisor import Supervisor


def process(stopping: bool = False) -> SimpleNamespace:
    events = EventLog()
    return SimpleNamespace(
        supervisor=Supervisor(events),
        events=events,
        started_at=time.time() - 5,
        stopping=stopping,
        health=lambda: [],
        reload_state=lambda: {"last_reload_ok": True, "last_reload_success": 1.0},
        request_stop=lambda reason: None,
        config=parse_config({}),
    )


@pytest.fixture
def backend(tmp_path: Path) -> SqliteBackend:
    made = SqliteBackend(tmp_path / "queue.db")
    made.initialize()
    return made


def local(backend: SqliteBackend, delivery: Any = None) -> LocalSurface:
    return LocalSurface(
        process(),
        lambda: QueueReader(backend.connect()),
        Counters(),
        delivery,  # type: ignore[arg-type]
    )


def master(backend: SqliteBackend) -> MasterSurface:
    config = parse_config({})
    stand_in = SimpleNamespace(workers=[], config=config, backend=backend)
    return MasterSurface(process(stopping=True), stand_in)  # type: ignore[arg-type]


def delivery() -> SimpleNamespace:
    return SimpleNamespace(
        connectors=Connectors(["postoffice"]),
        wakeup=Wakeup(),
        in_flight=InFlight(),
        interchange_threads=[],
        clear_down=lambda names, by: [],
        destination_state=lambda: {},
    )


def test_one_status_shape_for_one_process_and_for_the_master(backend: SqliteBackend) -> None:
    surfaces: list[ControlSurface] = [local(backend, delivery()), master(backend)]
    one, other = (s.status() for s in surfaces)
    assert set(one) == set(other) == {
        "version", "pid", "state", "uptime", "healthy", "reasons", "restarts", "abandoned",
        "processes", "queues", "nodes", "counters", "config",
    }  # fmt: skip
    assert (one["state"], other["state"]) == ("running", "stopping")
    assert one["uptime"] >= 5 and one["healthy"] and one["reasons"] == []
    assert set(one["queues"]["postoffice"]) >= {*STATES, "length", "oldest_age", "paused"}
    assert one["processes"][0]["role"] == "single"
    assert other["processes"][0]["role"] == "master"
    for surface in surfaces:
        surface.close()


def test_a_process_that_delivers_nothing_refuses_delivery_commands(backend: SqliteBackend) -> None:
    commands = command_table(local(backend))
    for name in ("pause", "resume", "wake", "refresh"):
        with pytest.raises(KeyError, match="delivers nothing"):
            commands[name]({})
    with pytest.raises(ValueError, match="give queue_id"):
        commands["cancel"]({"queue_id": 5})


def test_pause_and_resume_one_connector(backend: SqliteBackend) -> None:
    commands = command_table(local(backend, delivery()))
    assert commands["pause"]({"connector": "postoffice"}) == {"paused": ["postoffice"]}
    assert commands["queues"]({})["postoffice"]["paused"] is True
    assert commands["resume"]({}) == {"resumed": ["postoffice"]}
    with pytest.raises(KeyError, match="no connector 'nope'"):
        commands["pause"]({"connector": "nope"})


def test_loglevel_is_set_live_and_shown_for_every_category(backend: SqliteBackend) -> None:
    surface = local(backend)
    levels = command_table(surface)["loglevel"]({"category": "Receive", "level": "maximum"})
    assert levels["Receive"] == "maximum" and set(levels) == {c.value for c in Category}
    with pytest.raises(ValueError, match="give a level"):
        surface.loglevel("Receive", None)


def test_the_master_relays_to_no_worker_when_none_runs(backend: SqliteBackend) -> None:
    surface = master(backend)
    assert surface.pause(None) == {} and surface.wake("postoffice", True, None) == {}
    assert surface.dump(), "the master's own stacks at least"
