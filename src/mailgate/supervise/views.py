"""What the supervisor shows of its threads: the cheap, lock-free views `statistics()` builds.

Plain frozen records, read by the control surface and the dashboard; building one never
blocks a supervised thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.supervise.handle import Work


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
    recycles: int
    last_progress: float
    jobs_done: int
    cpu_seconds: float | None
    alive: bool
    generation: int
    abandoned: int


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    threads: tuple[ThreadView, ...]
    failed: tuple[str, ...]
    stalled: tuple[str, ...]
    abandoned: int
    restarts: int
