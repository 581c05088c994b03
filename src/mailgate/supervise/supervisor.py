"""The supervisor: owns every thread, restarts the dead, detects the stalled, reports all.

Each registered thread runs a body `body(handle)`; every start is a new "life"
with a fresh handle, in a new OS thread, so the body builds its context anew
(the lesson of Q151473). The monitor thread (itself registered) checks all
lives several times a second:

- A body that raised or returned unasked is restarted after the back-off of
  its RestartBudget (budget.py: doubling, longer for one that died before its
  first job). More than `max_restarts` within `window` seconds fails the
  thread (event 10003); a critical one makes the service exit non-zero. A body that returns with
  `handle.recycle` set is replaced at once (workers recycle by design).
- A busy thread with no progress for `stall_after` seconds is stalled (event
  5003 with its stack and whether it burns CPU): its in-flight I/O is aborted
  and `on_stall` releases its leases. If it still makes no progress within
  `grace` seconds it is abandoned (event 5004) and a replacement starts; the
  abandoned thread, should it ever wake, finds its stop flag set. A thread
  spawned with `abandon=False` (one a replacement could not help: the SMTP
  loop, a committer) stays stalled, and the service unhealthy, until it moves.
A deliberate stop is never restarted. `statistics()` is the cheap, lock-free view.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.supervise.budget import BACKOFF_FIRST, RestartBudget
from mailgate.supervise.cpu import cpu_rate, name_os_thread, thread_cpu_seconds
from mailgate.supervise.handle import ThreadHandle, ThreadState
from mailgate.supervise.views import SupervisorStats, ThreadView

Body = Callable[[ThreadHandle], None]

TICK = 0.2
# CPU seconds per second above which a stalled thread is spinning rather than blocked. A
# blocked thread uses ~0; a spinning one gets what the GIL and other processes leave it,
# which on a busy 2-core machine can be as little as a few tenths.
SPINNING = 0.1


@dataclass(slots=True)
class _Life:
    handle: ThreadHandle
    thread: threading.Thread
    native_id: int | None = None
    error: BaseException | None = None
    ended: bool = False
    structural: bool = False
    stalled_at: float | None = None
    cpu: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=4096))


@dataclass(slots=True)
class _Slot:
    name: str
    role: str
    connector: str | None
    body: Body
    critical: bool
    on_stop: Callable[[], None] | None
    on_stall: Callable[[ThreadHandle], None] | None
    stall_after: float | None
    budget: RestartBudget
    abandon: bool = True
    on_fail: Callable[[], None] | None = None
    life: _Life | None = None
    generation: int = 0
    restarts: int = 0
    recycles: int = 0
    restart_at: float | None = None
    failed: bool = False
    stopped: bool = False
    abandoned: list[_Life] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        events: EventLog,
        *,
        max_restarts: int = 5,
        window: float = 60.0,
        on_fatal: Callable[[str], None] | None = None,
        backoff: float = BACKOFF_FIRST,
        stall_after: float = 120.0,
        grace: float = 30.0,
    ) -> None:
        self._events = events
        self._max_restarts = max_restarts
        self._window = window
        self._on_fatal = on_fatal
        self._backoff = backoff
        self.stall_after = stall_after
        self.grace = grace
        self._slots: dict[str, _Slot] = {}
        self._changed = threading.Event()
        self._stopping = threading.Event()

    # --- registry --------------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        role: str,
        body: Body,
        *,
        connector: str | None = None,
        critical: bool = False,
        on_stop: Callable[[], None] | None = None,
        on_stall: Callable[[ThreadHandle], None] | None = None,
        stall_detection: bool = True,
        abandon: bool = True,
        on_fail: Callable[[], None] | None = None,
    ) -> ThreadHandle:
        """Register a thread and start it now; returns its first life's handle.

        `on_fail` runs once the thread will not run again: its restarts spent (before a
        critical failure stops the service), or the service stopping while it waits for
        a restart. What the thread owed its callers (a committer's waiting futures) is
        failed there, instead of being waited for until the stop's deadline."""
        if name in self._slots:
            raise ValueError(f"thread name {name!r} is already registered")
        stall_after = self.stall_after if stall_detection else None
        budget = RestartBudget(self._max_restarts, self._window, self._backoff)
        slot = _Slot(
            name, role, connector, body, critical, on_stop, on_stall, stall_after, budget, abandon,
            on_fail,
        )  # fmt: skip
        self._slots[name] = slot
        return self._launch(slot)

    def start(self) -> None:
        """Start the monitor thread (itself registered, so it shows in every view)."""
        self.spawn("supervisor", "supervisor", self._watch, critical=True, stall_detection=False)

    def handle(self, name: str) -> ThreadHandle | None:
        slot = self._slots.get(name)
        return slot.life.handle if slot and slot.life else None

    def registered_idents(self) -> set[int]:
        idents = set()
        for slot in list(self._slots.values()):
            for life in [*(slot.abandoned), *([slot.life] if slot.life else [])]:
                if life.thread.ident is not None:
                    idents.add(life.thread.ident)
        return idents

    def statistics(self) -> SupervisorStats:
        views = []
        for slot in list(self._slots.values()):
            life = slot.life
            if life is None:
                continue
            handle, alive = life.handle, life.thread.is_alive()
            views.append(
                ThreadView(
                    name=slot.name,
                    role=slot.role,
                    connector=slot.connector,
                    native_id=life.native_id,
                    state=handle.state.value,
                    work=handle.work,
                    started_at=handle.started_at,
                    restarts=slot.restarts,
                    recycles=slot.recycles,
                    last_progress=handle.last_progress,
                    jobs_done=handle.jobs_done,
                    cpu_seconds=thread_cpu_seconds(life.native_id) if alive else None,
                    alive=alive,
                    generation=slot.generation,
                    abandoned=len(slot.abandoned),
                )
            )
        return SupervisorStats(
            threads=tuple(views),
            failed=tuple(v.name for v in views if v.state == ThreadState.FAILED),
            stalled=tuple(v.name for v in views if v.state == ThreadState.STALLED),
            abandoned=sum(v.abandoned for v in views),
            restarts=sum(v.restarts for v in views),
        )

    def stuck(self) -> dict[str, float]:
        """Critical threads stalled that this supervisor will not replace (`abandon=False`):
        seconds stalled, by name. Only the end of the process frees them (the master's call)."""
        now, slots = time.time(), list(self._slots.values())
        lives = [(s.name, s.life) for s in slots if s.critical and not s.abandon and s.life]
        return {name: now - life.stalled_at for name, life in lives if life.stalled_at}

    # --- running ---------------------------------------------------------------------------------
    def _launch(self, slot: _Slot) -> ThreadHandle:
        slot.generation += 1
        slot.restart_at = None
        handle = ThreadHandle(slot.name, slot.role, slot.connector, slot.generation)
        life = _Life(handle, threading.Thread())
        life.thread = threading.Thread(
            target=self._run, args=(slot, life), name=slot.name, daemon=True
        )
        slot.life = life
        life.thread.start()
        return handle

    def _run(self, slot: _Slot, life: _Life) -> None:
        handle = life.handle
        life.native_id = threading.get_native_id()
        name_os_thread(slot.name)
        self._events.emit(
            catalog.THREAD_STARTED, thread=slot.name, role=slot.role, native_id=life.native_id
        )
        try:
            if handle.state is ThreadState.STARTING:
                handle.state = ThreadState.IDLE
            slot.body(handle)
        except BaseException as exc:  # the supervisor is the last line: record, then restart
            life.error = exc
        finally:
            life.structural = handle.jobs_done == 0
            if handle.state is not ThreadState.ABANDONED:
                handle.work = None
                deliberate = handle.stopping and life.error is None
                handle.state = ThreadState.STOPPED if deliberate else ThreadState.RESTARTING
            life.ended = True
            self._changed.set()

    def _watch(self, handle: ThreadHandle) -> None:
        while not handle.stopping:
            handle.progress()
            self._changed.wait(TICK)
            self._changed.clear()
            if self._stopping.is_set():
                continue
            now = time.time()
            for slot in list(self._slots.values()):
                if slot.name == "supervisor" or slot.failed or slot.stopped:
                    continue
                self._check(slot, now)

    def _check(self, slot: _Slot, now: float) -> None:
        life = slot.life
        if life is None:
            return
        if life.ended:
            if slot.restart_at is None:
                self._schedule_restart(slot, life, now)
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._launch(slot)
            return
        if slot.stall_after is not None:
            self._check_stall(slot, life, now)

    def _schedule_restart(self, slot: _Slot, life: _Life, now: float) -> None:
        handle = life.handle
        if handle.recycle and life.error is None:
            slot.recycles += 1
            slot.restarts -= 1  # a recycle is not a failure: _check counts it back up
            slot.restart_at = now
            self._events.emit(
                catalog.THREAD_RECYCLED,
                thread=slot.name,
                role=slot.role,
                jobs=handle.jobs_done,
                generation=slot.generation + 1,
            )
            return
        if not slot.budget.spend(now):
            self._fail(slot, handle)
            return
        backoff = slot.budget.backoff(life.structural)
        slot.restart_at = now + backoff
        if life.error is not None:
            self._events.emit(
                catalog.THREAD_EXCEPTION,
                thread=slot.name,
                role=slot.role,
                error=repr(life.error),
                restarts=slot.restarts + 1,
                backoff=round(backoff, 3),
                traceback="".join(traceback.format_exception(life.error)),
            )
        else:
            self._events.emit(
                catalog.THREAD_EXITED,
                thread=slot.name,
                role=slot.role,
                restarts=slot.restarts + 1,
                backoff=round(backoff, 3),
            )

    def _fail(self, slot: _Slot, handle: ThreadHandle) -> None:
        slot.failed = True
        handle.state = ThreadState.FAILED
        self._events.emit(
            catalog.THREAD_FAILED,
            thread=slot.name,
            role=slot.role,
            restarts=slot.budget.used,
            window=int(self._window),
        )
        if slot.connector is not None:
            self._events.emit(catalog.CONNECTOR_FAILED, connector=slot.connector, thread=slot.name)
        self._gone(slot)
        if slot.critical and self._on_fatal is not None:
            self._on_fatal(f"critical thread {slot.name} failed")

    def _gone(self, slot: _Slot) -> None:
        """The slot's thread will not run again: fail what it owed (`on_fail`), once."""
        on_fail, slot.on_fail = slot.on_fail, None
        if on_fail is None:
            return
        try:
            on_fail()
        except Exception as exc:  # the service must still learn of the failure
            self._events.emit(catalog.STORE_ERROR, operation="fail waiting", error=str(exc))

    # --- stalls ----------------------------------------------------------------------------------
    def _check_stall(self, slot: _Slot, life: _Life, now: float) -> None:
        handle = life.handle
        cpu = thread_cpu_seconds(life.native_id)
        if cpu is not None and (not life.cpu or now - life.cpu[-1][0] >= 1.0):
            life.cpu.append((now, cpu))
        if life.stalled_at is not None and handle.state is not ThreadState.STALLED:
            life.stalled_at = None  # it made progress again
            self._events.emit(catalog.THREAD_RESUMED, thread=slot.name, role=slot.role)
            return
        if handle.state is ThreadState.BUSY and slot.stall_after is not None:
            since = max(handle.last_progress, handle.work.since if handle.work else 0.0)
            if now - since > slot.stall_after:
                self._stalled(slot, life, now, since)
        elif (
            handle.state is ThreadState.STALLED
            and slot.abandon
            and life.stalled_at is not None
            and now - life.stalled_at > self.grace
        ):
            self._abandon(slot, life)

    def _stalled(self, slot: _Slot, life: _Life, now: float, since: float) -> None:
        handle = life.handle
        handle.state = ThreadState.STALLED
        life.stalled_at = now
        rate = cpu_rate(life.cpu, since, now)
        frame = sys._current_frames().get(life.thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        work = handle.work
        self._events.emit(
            catalog.THREAD_STALLED,
            thread=slot.name,
            role=slot.role,
            seconds=round(now - since, 1),
            cpu_rate=round(rate, 2) if rate is not None else "unknown",
            kind="spinning on CPU" if (rate or 0) > SPINNING else "blocked",
            queue_id=work.queue_id if work else None,
            recipient=work.recipient if work else None,
            stack=stack,
        )
        handle.abort()
        if slot.on_stall is not None:
            try:
                slot.on_stall(handle)
            except Exception as exc:  # releasing leases must not kill the monitor
                self._events.emit(catalog.STORE_ERROR, operation="release stalled", error=str(exc))

    def _abandon(self, slot: _Slot, life: _Life) -> None:
        handle = life.handle
        handle.state = ThreadState.ABANDONED
        handle.stop_event.set()
        slot.abandoned.append(life)
        self._events.emit(
            catalog.THREAD_ABANDONED,
            thread=slot.name,
            role=slot.role,
            grace=self.grace,
            abandoned=len(slot.abandoned),
        )
        self._launch(slot)

    # --- stopping --------------------------------------------------------------------------------
    def stop(self, names: Sequence[str], deadline: float) -> list[str]:
        """Ask the named threads to stop and wait until `deadline` (monotonic).

        Returns the names of threads still running when the deadline passed.
        """
        slots = [self._slots[n] for n in names if n in self._slots]
        for slot in slots:
            slot.stopped = True
            slot.restart_at = None
            for life in [*slot.abandoned, *([slot.life] if slot.life else [])]:
                life.handle.stop_event.set()
            if slot.life is not None and slot.life.handle.state is not ThreadState.FAILED:
                slot.life.handle.state = ThreadState.STOPPING
            if slot.on_stop is not None:
                slot.on_stop()
        left = []
        for slot in slots:
            current = slot.life
            if current is None or current.thread is threading.current_thread():
                continue
            # Past the deadline a thread still gets a moment: most end at once when asked,
            # and naming them as "did not stop" would hide the one that really hangs.
            current.thread.join(max(0.15, deadline - time.monotonic()))
            if current.thread.is_alive():
                left.append(slot.name)
            left += [f"{slot.name} (abandoned)" for a in slot.abandoned if a.thread.is_alive()]
        return left

    def stop_all(self, groups: Sequence[Sequence[str]], deadline: float) -> list[str]:
        """Stop the named groups one after another, then every other thread, then the monitor.

        Order matters: receivers stop before the committer they hand messages to.
        """
        self._stopping.set()
        for slot in list(self._slots.values()):
            if slot.life is not None and slot.life.ended:  # dead, waiting for a restart
                self._gone(slot)  # none comes now: whoever waits on it must not wait on
        left: list[str] = []
        named = {n for group in groups for n in group}
        for group in groups:
            left += self.stop(group, deadline)
        rest = [n for n in self._slots if n not in named and n != "supervisor"]
        left += self.stop(rest, deadline)
        # The monitor only sleeps in short waits: it always gets a moment to end.
        left += self.stop(["supervisor"], max(deadline, time.monotonic() + 1.0))
        return left
