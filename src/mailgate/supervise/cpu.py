"""Per-thread CPU seconds from /proc, like Performance Monitor's "% Processor Time".

A thread that should be working but shows no CPU is blocked; one that burns CPU
with no progress is spinning. Returns None where /proc is not available.
`name_os_thread` gives the calling thread its supervised name in the kernel too, so
`top -H`, `ps -L` and /proc show "smtp", "commit-sync" instead of "python" for each.
"""

from __future__ import annotations

import os
import threading
from collections import deque

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds(native_id: int | None, pid: int | None = None) -> float | None:
    if native_id is None:
        return None
    try:
        with open(f"/proc/{pid or os.getpid()}/task/{native_id}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at ") ".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, ValueError):
        return None


def name_os_thread(name: str) -> None:
    """Set the calling thread's kernel name (its first 15 bytes, the kernel's limit). Best
    effort: where /proc is not writable the thread keeps the process's name."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as f:
            f.write(name.encode("ascii", "replace")[:15])
    except OSError:
        pass


def cpu_rate(samples: deque[tuple[float, float]], since: float, now: float) -> float | None:
    """CPU seconds per second over [since, now], from the samples nearest those times."""
    if len(samples) < 2:
        return None
    start = min(samples, key=lambda s: abs(s[0] - since))
    end = samples[-1]
    if end[0] - start[0] < 0.5:
        start = samples[0]
    span = end[0] - start[0]
    return (end[1] - start[1]) / span if span > 0 else None
