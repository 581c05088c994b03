"""The supervisor with real threads: restarts with fresh context, budgets, stop deadlines, views."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mailgate.config import parse_config
from mailgate.observe.events import EventLog, HumanFormatter
from mailgate.service.processes import single_process
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor
from tests.support.process import wait_for
from tests.unit.test_events import ListHandler


def supervisor(**kw: object) -> tuple[Supervisor, ListHandler]:
    events = EventLog()
    sink = ListHandler()
    sink.setFormatter(HumanFormatter())
    events.add_sink(sink)
    sup = Supervisor(events, backoff=0.05, **kw)  # type: ignore[arg-type]
    sup.start()
    return sup, sink


def test_a_thread_that_raises_is_restarted_with_fresh_context() -> None:
    sup, sink = supervisor()
    contexts: list[int] = []
    natives: list[int] = []

    def body(handle: ThreadHandle) -> None:
        context = len(contexts)  # built inside the thread, every (re)start
        contexts.append(context)
        natives.append(threading.get_native_id())
        if context == 0:
            raise RuntimeError("first life fails")
        handle.progress()
        handle.wait(30)

    sup.spawn("worker", "test", body)
    wait_for(lambda: len(contexts) == 2, 5, what="restart")
    assert natives[0] != natives[1], "a restart is a new thread"
    view = {v.name: v for v in sup.statistics().threads}["worker"]
    assert view.restarts == 1 and view.alive
    assert any("2380" in line and "first life fails" in line for line in sink.lines)
    assert sup.stop_all([["worker"]], time.monotonic() + 5) == []


def test_restart_budget_fails_the_thread_and_tells_the_service() -> None:
    fatal: list[str] = []
    sup, sink = supervisor(max_restarts=2, window=60, on_fatal=fatal.append)

    def body(handle: ThreadHandle) -> None:
        raise RuntimeError("always")

    sup.spawn("doomed", "test", body, critical=True)
    wait_for(lambda: fatal, 10, what="fatal report")
    view = {v.name: v for v in sup.statistics().threads}["doomed"]
    assert view.state == "failed" and not view.alive
    assert any("10003" in line for line in sink.lines)
    assert sum("2380" in line for line in sink.lines) == 2
    sup.stop_all([], time.monotonic() + 5)


def test_a_thread_that_returns_on_its_own_is_restarted() -> None:
    sup, sink = supervisor()
    starts: list[int] = []

    def body(handle: ThreadHandle) -> None:
        starts.append(1)
        if len(starts) == 1:
            return
        handle.wait(30)

    sup.spawn("quitter", "test", body)
    wait_for(lambda: len(starts) == 2, 5, what="restart")
    assert any("5001" in line for line in sink.lines)
    sup.stop_all([["quitter"]], time.monotonic() + 5)


def test_stop_respects_the_deadline_and_names_the_stuck_thread() -> None:
    sup, _ = supervisor()
    release = threading.Event()
    sup.spawn("stuck", "test", lambda h: release.wait(60))
    sup.spawn("polite", "test", lambda h: h.wait(60))
    started = time.monotonic()
    left = sup.stop_all([["polite"], ["stuck"]], time.monotonic() + 1.0)
    assert left == ["stuck"]
    assert time.monotonic() - started < 3
    release.set()


def test_cpu_seconds_tell_a_spinning_thread_from_a_blocked_one() -> None:
    sup, _ = supervisor()

    def spin(handle: ThreadHandle) -> None:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not handle.stopping:
            pass
        handle.wait(30)

    sup.spawn("spinner", "test", spin)
    sup.spawn("sleeper", "test", lambda h: h.wait(30))
    time.sleep(1.0)  # let the spinner accumulate CPU time (measured, not synchronised on)
    views = {v.name: v for v in sup.statistics().threads}
    assert (views["spinner"].cpu_seconds or 0) > 0.3
    assert (views["sleeper"].cpu_seconds or 0) < 0.1
    sup.stop_all([["spinner", "sleeper"]], time.monotonic() + 5)


def test_every_thread_of_a_running_service_is_registered(tmp_path: Path) -> None:
    config = parse_config(
        {"service": {"data_dir": str(tmp_path), "hostname": "mx.test"}, "log": {"stderr": False}},
        {"smtp.listen": "127.0.0.1:0", "admin.listen": "127.0.0.1:0"},
    )
    before = {t.ident for t in threading.enumerate()}
    service = single_process(config, EventLog())
    service.start()
    try:
        wait_for(lambda: len(service.supervisor.statistics().threads) >= 6, 5, what="threads")
        running = {t.ident for t in threading.enumerate()} - before
        registered = service.supervisor.registered_idents()
        unregistered = [t.name for t in threading.enumerate() if t.ident in running - registered]
        assert not unregistered, f"threads not registered with the supervisor: {unregistered}"
        names = {v.name for v in service.supervisor.statistics().threads}
        assert {"supervisor", "commit", "scheduler", "smtp", "postoffice-1"} <= names
    finally:
        assert service.stop() == []


def test_a_thread_spawned_not_to_be_abandoned_stays_stalled_until_it_moves() -> None:
    sup, sink = supervisor(stall_after=0.3, grace=0.3)
    release = threading.Event()

    def body(handle: ThreadHandle) -> None:
        handle.busy()
        release.wait(30)  # wedged well past stall_after + grace
        handle.progress()
        handle.wait(30)

    sup.spawn("loop", "test", body, abandon=False)
    wait_for(lambda: sup.statistics().stalled == ("loop",), 5, what="stalled")
    time.sleep(1.0)  # three times the grace: an abandonable thread would be replaced by now
    assert not any("5004" in line for line in sink.lines), sink.lines
    assert sup.statistics().stalled == ("loop",)
    release.set()
    wait_for(lambda: any("5005" in line for line in sink.lines), 5, what="resumed")
    assert sup.statistics().abandoned == 0
    assert sup.stop_all([["loop"]], time.monotonic() + 5) == []
