"""In-process wake-ups: a receiver tells a connector's idle threads that work arrived.

A generation counter per connector under one condition variable: a waiter
passes the generation it last saw and returns as soon as it changes, so a
notification between two waits is never lost. Waits are always bounded; the
queue is the truth, a wake-up is only a hint.
"""

from __future__ import annotations

import threading

from mailgate.testing import faults


class Wakeup:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation: dict[str, int] = {}
        self._everything = 0

    def notify(self, *connectors: str) -> None:
        with self._cond:
            for name in connectors:
                self._generation[name] = self._generation.get(name, 0) + 1
            self._cond.notify_all()

    def notify_all(self) -> None:
        with self._cond:
            self._everything += 1
            self._cond.notify_all()

    def generation(self, connector: str) -> int:
        with self._cond:
            return self._generation.get(connector, 0) + self._everything

    def wait(self, connector: str, seen: int, timeout: float) -> int:
        """Block until the connector's generation differs from `seen` or `timeout` passes."""
        with self._cond:
            faults.check("wakeup.wait")  # tests: an exception while holding the lock
            self._cond.wait_for(
                lambda: self._generation.get(connector, 0) + self._everything != seen, timeout
            )
            return self._generation.get(connector, 0) + self._everything
