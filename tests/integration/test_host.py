"""The Host every process runs on, with parts of the test's own making: a real supervisor
and real threads, so the order of starts, stops and reloads is the real one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.config import parse_config
from mailgate.config.schema import Config
from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog, HumanFormatter
from mailgate.service.host import Host
from mailgate.service.part import Apply, Part, Phase
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor
from tests.unit.test_events import ListHandler


class Recorded(Part):
    """A part with a thread per phase (and others that stop with the rest), recording what
    the host asks of it."""

    def __init__(
        self, name: str, log: list[str], phases: dict[Phase, str], rest: tuple[str, ...] = ()
    ) -> None:
        self.name, self.log, self.phases, self.rest = name, log, phases, rest
        self.fail_prepare = False
        self.refuse = ""

    def prepare(self) -> None:
        if self.fail_prepare:
            raise OSError(f"{self.name}: cannot bind")
        self.log.append(f"prepare {self.name}")

    def start(self, sup: Supervisor) -> None:
        for thread in [*self.phases.values(), *self.rest]:
            sup.spawn(thread, "test", self._body(thread))

    def _body(self, thread: str) -> Callable[[ThreadHandle], None]:
        def run(handle: ThreadHandle) -> None:
            handle.wait(30)
            self.log.append(f"stopped {thread}")

        return run

    def threads(self, phase: Phase) -> list[str]:
        return [self.phases[phase]] if phase in self.phases else []

    def close(self) -> None:
        self.log.append(f"close {self.name}")

    def reload(self, new: Config) -> Apply:
        if self.refuse:
            raise ValueError(self.refuse)

        def apply() -> dict[str, str]:
            self.log.append(f"reloaded {self.name}")
            return {self.name: "taken"}

        return apply


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def sink() -> ListHandler:
    handler = ListHandler()
    handler.setFormatter(HumanFormatter())
    return handler


@pytest.fixture
def host(tmp_path: Path, log: list[str], sink: ListHandler) -> Host:
    config = parse_config({"service": {"data_dir": str(tmp_path), "stop_timeout": "5s"}})
    events = EventLog()
    events.add_sink(sink)
    made = Host(config, events, owner=False)
    made.parts = [
        Recorded("control", log, {}, rest=("control",)),
        Recorded("queue", log, {Phase.COMMIT: "commit"}),
        Recorded("delivery", log, {Phase.DELIVERY: "deliver-1", Phase.SCHEDULE: "scheduler"}),
        Recorded("receive", log, {Phase.INTAKE: "smtp"}),
    ]
    return made


def parts(host: Host) -> list[Recorded]:
    return [p for p in host.parts if isinstance(p, Recorded)]


def test_threads_stop_phase_by_phase_receivers_first_the_committer_last(
    host: Host, log: list[str]
) -> None:
    host.start()
    assert log == [f"prepare {p.name}" for p in parts(host)], "prepared in order"
    assert host.stop() == []
    assert [line for line in log if line.startswith("stopped")] == [
        "stopped smtp", "stopped deliver-1", "stopped scheduler", "stopped commit",
        "stopped control",
    ]  # fmt: skip
    assert log[-4:] == [f"close {p.name}" for p in reversed(parts(host))], "closed in reverse"


def test_a_part_that_cannot_prepare_stops_the_start_and_closes_the_others(
    host: Host, log: list[str]
) -> None:
    parts(host)[2].fail_prepare = True
    with pytest.raises(OSError, match="delivery: cannot bind"):
        host.start()
    assert log == ["prepare control", "prepare queue", "close queue", "close control"]
    assert host.supervisor.statistics().threads == (), "no thread started"


def test_a_reload_one_part_refuses_changes_nothing_anywhere(
    host: Host, log: list[str], sink: ListHandler
) -> None:
    levels = host.config.log.model_copy(update={"levels": {"Sent": "none"}})
    new = host.config.model_copy(update={"log": levels})
    parts(host)[2].refuse = "no such connector"
    answer = host.reload(new)
    assert answer["reloaded"] is False and "no such connector" in answer["problems"]
    assert not [line for line in log if line.startswith("reloaded")], "a part took it"
    assert host.events.level(Category.SENT) is Level.MAXIMUM, "levels swapped anyway"
    assert host.reload_state()["last_reload_ok"] is False
    assert any(f" {catalog.CONFIG_INVALID.id} " in line for line in sink.lines), sink.lines
    parts(host)[2].refuse = ""
    answer = host.reload(new)
    assert answer == {"reloaded": True, **{p.name: "taken" for p in parts(host)}}
    assert host.events.level(Category.SENT) is Level.NONE
    assert host.reload_state()["last_reload_ok"] is True


def test_health_says_what_the_parts_say_and_the_first_stop_reason_is_kept(host: Host) -> None:
    class Sick(Part):
        def health(self) -> list[str]:
            return ["connector smarthost stalled"]

    host.parts.append(Sick())
    assert host.health() == ["connector smarthost stalled"]
    host.request_stop("SIGTERM received")
    host.request_stop("mailgate ctl stop")
    host.fail("critical thread commit failed")
    assert host.stopping
    assert host.health() == ["connector smarthost stalled", "critical thread commit failed"]
    assert host.serve() == "SIGTERM received"
