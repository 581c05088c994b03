"""Named fault points in supervised code, off unless MAILGATE_FAULTS enables them.

    MAILGATE_FAULTS="interchange.deliver=raise:2,interchange.deliver[bad@x.test]=hang"

Each entry is `point=action[:count]`; `count` limits how many times the fault
fires (default: every time). A point checked with a key (a recipient) can also be
named `point[key]`, to fault one message among many. Actions: `raise`
(InjectedFault), `hang` (block the calling thread until the process ends), `block`
(block it while the file named by MAILGATE_FAULTS_GATE exists: a test arms it by
creating the file and releases it by removing it; while there is no file it neither
fires nor counts), `spin` (burn CPU forever), `exit` (raise FaultExit, which a thread
body treats as "return now, silently"). With no fault named, a check costs one
attribute test. They live beside the supervisor because each one makes a supervised
thread fail, hang or spin, for the supervisor to detect; used by the test suite, never
enable them in production (the variable is read once, at import).
"""

from __future__ import annotations

import os
import threading
import time

ENV = "MAILGATE_FAULTS"
GATE_ENV = "MAILGATE_FAULTS_GATE"


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
            if action not in ("raise", "hang", "block", "spin", "exit"):
                raise ValueError(f"{ENV}: unknown fault action {action!r} in {entry!r}")
            self._points[point] = (action, [int(count) if count else None])
        self.enabled = bool(self._points)

    def fire(self, point: str) -> str | None:
        entry = self._points.get(point)
        if entry is None:
            return None
        action, remaining = entry
        if action == "block" and not _gate_closed():
            return None
        with self._lock:
            left = remaining[0]
            if left is not None:
                if left <= 0:
                    return None
                remaining[0] = left - 1
        return action


def _gate_closed() -> bool:
    gate = os.environ.get(GATE_ENV, "")
    return bool(gate) and os.path.exists(gate)


_active = _Faults(os.environ.get(ENV, ""))


def configure(spec: str) -> None:
    """Replace the active fault set (tests running in-process)."""
    global _active
    _active = _Faults(spec)


def check(point: str, key: str | None = None) -> None:
    """Fire the fault at `point` (or at `point[key]`) if one is enabled."""
    if not _active.enabled:
        return
    action = _active.fire(point)
    if action is None and key is not None:
        action = _active.fire(f"{point}[{key}]")
    if action is None:
        return
    if action == "raise":
        raise InjectedFault(f"fault injected at {point}")
    if action == "exit":
        raise FaultExit(point)
    if action == "hang":
        threading.Event().wait()
    if action == "block":
        while _gate_closed():
            time.sleep(0.02)
    if action == "spin":
        while True:
            time.monotonic()
