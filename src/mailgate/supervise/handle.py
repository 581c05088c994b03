"""What a supervised thread sees of its supervisor: stop requests and progress reports.

Every start of a thread (a "life") gets a fresh handle, so a thread that was
abandoned and later wakes up can never disturb its replacement's state. Thread
bodies call `busy(...)` when they take up a piece of work, `progress()` when
they finish one, and `idle()` when they wait; they poll `stopping` or wait with
`wait(timeout)`, which returns early when a stop is requested. A body that
returns with `recycle` set asked to be replaced by a fresh thread (workers are
disposable). Updates are plain attribute writes (atomic in CPython), so
reporting costs no lock. `on_abort` registers a way to break the thread out of a
blocking call (closing its socket) when it is found stalled.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class ThreadState(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STALLED = "stalled"
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTARTING = "restarting"
    FAILED = "failed"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Work:
    """What a thread is doing: a queue id, a recipient, a connector, since when."""

    queue_id: str | None
    recipient: str | None
    connector: str | None
    since: float


class ThreadHandle:
    def __init__(self, name: str, role: str, connector: str | None, generation: int = 1) -> None:
        self.name = name
        self.role = role
        self.connector = connector
        self.generation = generation
        self.stop_event = threading.Event()
        self.state = ThreadState.STARTING
        self.work: Work | None = None
        self.started_at = time.time()
        self.last_progress = self.started_at
        self.jobs_done = 0
        self.recycle = False
        self._abort: Callable[[], None] | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout`; True if a stop was requested."""
        return self.stop_event.wait(timeout)

    def busy(
        self,
        queue_id: str | None = None,
        recipient: str | None = None,
        connector: str | None = None,
    ) -> None:
        self.work = Work(queue_id, recipient, connector or self.connector, time.time())
        if self.state is not ThreadState.ABANDONED:
            self.state = ThreadState.BUSY

    def progress(self) -> None:
        self.last_progress = time.time()
        self.jobs_done += 1
        if self.state is ThreadState.STALLED:
            self.state = ThreadState.BUSY

    def idle(self) -> None:
        self.work = None
        if self.state is ThreadState.ABANDONED:
            return
        self.state = ThreadState.STOPPING if self.stopping else ThreadState.IDLE

    def on_abort(self, abort: Callable[[], None] | None) -> None:
        """Register (or clear, with None) how to break this thread out of a blocking call."""
        self._abort = abort

    def abort(self) -> bool:
        """Called by the supervisor on a stalled thread; True if there was something to abort."""
        abort = self._abort
        if abort is None:
            return False
        with contextlib.suppress(Exception):
            abort()
        return True
