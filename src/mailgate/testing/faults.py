"""Named fault points, off unless the environment variable MAILGATE_FAULTS enables them.

    MAILGATE_FAULTS="interchange.deliver=raise:2,store.enqueue=raise"

Each entry is `point=action[:count]`; `count` limits how many times the fault
fires (default: every time). Actions: `raise` (InjectedFault), `hang` (block the
calling thread until the process ends), `spin` (burn CPU forever), `exit`
(raise FaultExit, which a thread body treats as "return now, silently"), `pause`
(block until a test releases it: see `pause`). A point that is not named
costs one dictionary lookup. Used by the test suite; never enable in production.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ENV = "MAILGATE_FAULTS"
DIR_ENV = "MAILGATE_FAULTS_DIR"
PAUSE_LIMIT = 120.0


class InjectedFault(RuntimeError):
    """Raised by a fault point with action `raise`."""


class FaultExit(Exception):
    """Raised by a fault point with action `exit`: the thread body should return silently."""


class _Faults:
    def __init__(self, spec: str) -> None:
        self._lock = threading.Lock()
        self._points: dict[str, tuple[str, list[int | None]]] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            point, _, action = entry.partition("=")
            action, _, count = action.partition(":")
            if action not in ("raise", "hang", "spin", "exit", "pause"):
                raise ValueError(f"{ENV}: unknown fault action {action!r} in {entry!r}")
            self._points[point] = (action, [int(count) if count else None])

    def fire(self, point: str) -> str | None:
        entry = self._points.get(point)
        if entry is None:
            return None
        action, remaining = entry
        with self._lock:
            left = remaining[0]
            if left is not None:
                if left <= 0:
                    return None
                remaining[0] = left - 1
        return action


_active = _Faults(os.environ.get(ENV, ""))


def configure(spec: str) -> None:
    """Replace the active fault set (tests running in-process)."""
    global _active
    _active = _Faults(spec)


def check(point: str) -> None:
    """Fire the fault at `point` if one is enabled."""
    action = _active.fire(point)
    if action is None:
        return
    if action == "raise":
        raise InjectedFault(f"fault injected at {point}")
    if action == "exit":
        raise FaultExit(point)
    if action == "hang":
        threading.Event().wait()
    if action == "pause":
        pause(point)
    if action == "spin":
        while True:
            time.monotonic()


def pause(point: str) -> None:
    """Block the calling thread until the file `<point>.release` appears in the directory
    named by MAILGATE_FAULTS_DIR (at most PAUSE_LIMIT seconds). `<point>.paused` is created
    there first, so a test in another process knows the thread got here."""
    folder = Path(os.environ.get(DIR_ENV, "."))
    (folder / f"{point}.paused").touch()
    release = folder / f"{point}.release"
    deadline = time.monotonic() + PAUSE_LIMIT
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
