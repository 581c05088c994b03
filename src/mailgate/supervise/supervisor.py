"""The supervisor: owns every thread, restarts the ones that die, reports them all.

Each thread runs a body `body(handle)`. When a body raises or returns without
being asked to stop, the supervisor's own monitor thread starts a *new* thread
for it after a back-off, so the body builds its context afresh (the lesson of
Q151473). Back-off doubles per restart; a thread that dies before finishing its
first job is throttled longer, since that points at a structural problem (as
Postfix's master assumes). More than `max_restarts` within `window` seconds and
the thread is failed (event 10003); if it is critical the service is told to
exit non-zero so its service manager can restart it. A deliberate stop is never
restarted. `statistics()` is the cheap, lock-free view of everything.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.supervise.cpu import thread_cpu_seconds
from mailgate.supervise.handle import ThreadHandle, ThreadState, Work

Body = Callable[[ThreadHandle], None]

BACKOFF_FIRST = 1.0
BACKOFF_STRUCTURAL = 5.0
BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True)
class ThreadView:
    name: str
    role: str
    connector: str | None
    native_id: int | None
    state: str
    work: Work | None
    started_at: float
    restarts: int
    last_progress: float
    jobs_done: int
    cpu_seconds: float | None
    alive: bool


@dataclass(slots=True)
class _Slot:
    handle: ThreadHandle
    body: Body
    critical: bool
    on_stop: Callable[[], None] | None
    thread: threading.Thread | None = None
    native_id: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    error: BaseException | None = None
    exited: bool = False
    failed: bool = False
    structural: bool = False


class Supervisor:
    def __init__(
        self,
        events: EventLog,
        *,
        max_restarts: int = 5,
        window: float = 60.0,
        on_fatal: Callable[[str], None] | None = None,
        backoff: float = BACKOFF_FIRST,
    ) -> None:
        self._events = events
        self._backoff = backoff
        self._max_restarts = max_restarts
        self._window = window
        self._on_fatal = on_fatal
        self._slots: dict[str, _Slot] = {}
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._monitor: _Slot | None = None

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
    ) -> ThreadHandle:
        """Register a thread and start it now."""
        if name in self._slots:
            raise ValueError(f"thread name {name!r} is already registered")
        slot = _Slot(ThreadHandle(name, role, connector), body, critical, on_stop)
        self._slots[name] = slot
        self._launch(slot)
        return slot.handle

    def start(self) -> None:
        """Start the monitor thread (itself registered, so it shows in every view)."""
        self._monitor = _Slot(
            ThreadHandle("supervisor", "supervisor", None), self._watch, True, None
        )
        self._slots["supervisor"] = self._monitor
        self._launch(self._monitor)

    def registered_idents(self) -> set[int]:
        return {s.thread.ident for s in self._slots.values() if s.thread and s.thread.ident}

    def statistics(self) -> tuple[ThreadView, ...]:
        views = []
        for slot in list(self._slots.values()):
            thread, handle = slot.thread, slot.handle
            alive = bool(thread and thread.is_alive())
            views.append(
                ThreadView(
                    name=handle.name,
                    role=handle.role,
                    connector=handle.connector,
                    native_id=slot.native_id,
                    state=handle.state.value,
                    work=handle.work,
                    started_at=slot.started_at,
                    restarts=slot.restarts,
                    last_progress=handle.last_progress,
                    jobs_done=handle.jobs_done,
                    cpu_seconds=thread_cpu_seconds(slot.native_id) if alive else None,
                    alive=alive,
                )
            )
        return tuple(views)

    # --- running ---------------------------------------------------------------------------------
    def _launch(self, slot: _Slot) -> None:
        slot.error, slot.exited, slot.restart_at = None, False, None
        slot.handle.state = ThreadState.STARTING
        slot.handle.work = None
        thread = threading.Thread(
            target=self._run, args=(slot,), name=slot.handle.name, daemon=True
        )
        slot.thread = thread
        thread.start()

    def _run(self, slot: _Slot) -> None:
        handle = slot.handle
        slot.native_id = threading.get_native_id()
        slot.started_at = time.time()
        jobs_at_start = handle.jobs_done
        self._events.emit(
            catalog.THREAD_STARTED, thread=handle.name, role=handle.role, native_id=slot.native_id
        )
        try:
            if handle.state is ThreadState.STARTING:
                handle.state = ThreadState.IDLE
            slot.body(handle)
        except BaseException as exc:  # the supervisor is the last line: record, then restart
            slot.error = exc
        finally:
            slot.exited = True
            handle.work = None
            if handle.stopping and slot.error is None:
                handle.state = ThreadState.STOPPED
            else:
                handle.state = ThreadState.RESTARTING
                slot.structural = handle.jobs_done == jobs_at_start
            self._changed.set()

    def _watch(self, handle: ThreadHandle) -> None:
        while not handle.stopping:
            handle.progress()
            self._changed.wait(0.2)
            self._changed.clear()
            now = time.time()
            for slot in list(self._slots.values()):
                if slot is self._monitor or slot.failed or self._stopping.is_set():
                    continue
                if slot.exited and slot.restart_at is None and not slot.handle.stopping:
                    self._schedule_restart(slot, now)
                if slot.restart_at is not None and now >= slot.restart_at:
                    slot.restarts += 1
                    self._launch(slot)

    def _schedule_restart(self, slot: _Slot, now: float) -> None:
        handle = slot.handle
        slot.recent.append(now)
        while slot.recent and now - slot.recent[0] > self._window:
            slot.recent.popleft()
        if len(slot.recent) > self._max_restarts:
            slot.failed = True
            handle.state = ThreadState.FAILED
            self._events.emit(
                catalog.THREAD_FAILED,
                thread=handle.name,
                role=handle.role,
                restarts=len(slot.recent),
                window=int(self._window),
            )
            if slot.critical and self._on_fatal is not None:
                self._on_fatal(f"critical thread {handle.name} failed")
            return
        base = self._backoff * (BACKOFF_STRUCTURAL / BACKOFF_FIRST if slot.structural else 1)
        backoff = min(BACKOFF_MAX, base * 2 ** (len(slot.recent) - 1))
        slot.restart_at = now + backoff
        if slot.error is not None:
            self._events.emit(
                catalog.THREAD_EXCEPTION,
                thread=handle.name,
                role=handle.role,
                error=repr(slot.error),
                restarts=slot.restarts + 1,
                backoff=backoff,
                traceback="".join(traceback.format_exception(slot.error)),
            )
        else:
            self._events.emit(
                catalog.THREAD_EXITED,
                thread=handle.name,
                role=handle.role,
                restarts=slot.restarts + 1,
                backoff=backoff,
            )

    # --- stopping --------------------------------------------------------------------------------
    def stop(self, names: Sequence[str], deadline: float) -> list[str]:
        """Ask the named threads to stop and wait until `deadline` (monotonic).

        Returns the names of threads still running when the deadline passed.
        """
        slots = [self._slots[n] for n in names if n in self._slots]
        for slot in slots:
            slot.restart_at = None
            slot.handle.stop_event.set()
            slot.handle.state = ThreadState.STOPPING
            if slot.on_stop is not None:
                slot.on_stop()
        left = []
        for slot in slots:
            thread = slot.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    left.append(slot.handle.name)
        return left

    def stop_all(self, groups: Sequence[Sequence[str]], deadline: float) -> list[str]:
        """Stop the named groups one after another, then every other thread, then the monitor.

        Order matters: receivers stop before the committer they hand messages to.
        """
        self._stopping.set()
        left: list[str] = []
        named = {n for group in groups for n in group}
        for group in groups:
            left += self.stop(group, deadline)
        left += self.stop(
            [n for n in self._slots if n not in named and n != "supervisor"], deadline
        )
        # The monitor only sleeps in short waits: it always gets a moment to end.
        left += self.stop(["supervisor"], max(deadline, time.monotonic() + 1.0))
        return left
