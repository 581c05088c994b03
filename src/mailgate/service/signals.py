"""Signals of `mailgate run`: SIGTERM or SIGINT stops, a second one exits at once, SIGHUP
reloads.

The handlers only record and set flags: the stop and the reload themselves run on the
main thread's serve loop (host.py). A second stop signal is the operator wanting out
now: event 1002 says so, `abort` ends what would outlive the process (the master's
workers), and the process exits 1 without waiting for anything. Installed before the
service starts, so no signal is lost. A worker process takes SIGTERM from its master
only, and leaves SIGINT (Ctrl-C reaches the master) and SIGHUP (reloads come from the
master, validated) alone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

from mailgate.observe import catalog
from mailgate.observe.events import EventLog


class Signals:
    def __init__(
        self,
        events: EventLog,
        stop: Callable[[str], None],
        abort: Callable[[], None] = lambda: None,
    ) -> None:
        self.events = events
        self.stop = stop
        self.abort = abort
        self.received: list[str] = []
        self._reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def take_reload(self) -> bool:
        """Whether SIGHUP came since the last call."""
        asked, self._reload = self._reload, False
        return asked

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received:
            self.events.emit(catalog.SERVICE_FAILED, reason=f"second {name}: exiting at once")
            self.abort()
            os._exit(1)
        self.received.append(name)
        self.stop(f"{name} received")

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True


def worker_signals(stop: Callable[[str], None]) -> None:
    """A worker: SIGTERM (from its master) stops it; SIGINT and SIGHUP are the master's."""
    signal.signal(signal.SIGTERM, lambda signum, frame: stop("SIGTERM received"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
