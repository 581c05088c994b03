"""What a supervised thread sees of its supervisor: stop requests and progress reports.

Thread bodies call `busy(...)` when they take up a piece of work, `progress()`
when they finish one, and `idle()` when they wait; they poll `stopping` or wait
with `wait(timeout)`, which returns early when a stop is requested. Updates are
plain attribute writes (atomic in CPython), so reporting costs no lock.
"""

from __future__ import annotations

import enum
import threading
import time
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


@dataclass(frozen=True, slots=True)
class Work:
    """What a thread is doing: a queue id, a recipient, a connector, since when."""

    queue_id: str | None
    recipient: str | None
    connector: str | None
    since: float


class ThreadHandle:
    def __init__(self, name: str, role: str, connector: str | None) -> None:
        self.name = name
        self.role = role
        self.connector = connector
        self.stop_event = threading.Event()
        self.state = ThreadState.STARTING
        self.work: Work | None = None
        self.last_progress = time.time()
        self.jobs_done = 0

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
        self.state = ThreadState.BUSY

    def progress(self) -> None:
        self.last_progress = time.time()
        self.jobs_done += 1

    def idle(self) -> None:
        self.work = None
        self.state = ThreadState.STOPPING if self.stopping else ThreadState.IDLE
