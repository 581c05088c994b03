"""Live state of each connector: paused or not, and when it last completed an attempt.

Written by interchange threads (plain attribute writes, no lock) and read by the
stall watch, the control socket and the counters. Pausing stops claiming new
work; receiving goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ConnectorState:
    name: str
    paused: bool = False
    last_completed: float = field(default_factory=time.time)
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    attempts: int = 0

    def completed(self, delivered: int, deferred: int, bounced: int) -> None:
        """Count recorded attempts; only final outcomes (delivered, bounced) are completions."""
        self.delivered += delivered
        self.deferred += deferred
        self.bounced += bounced
        self.attempts += delivered + deferred + bounced
        if delivered or bounced:
            self.last_completed = time.time()


class Connectors:
    """Every connector's state by name; the set of names is fixed at start."""

    def __init__(self, names: list[str]) -> None:
        self.by_name = {name: ConnectorState(name) for name in names}

    def __getitem__(self, name: str) -> ConnectorState:
        return self.by_name[name]

    def names(self) -> list[str]:
        return list(self.by_name)

    def set_paused(self, name: str | None, paused: bool) -> list[str]:
        """Pause or resume one connector (or all, with None); the names affected."""
        names = self.names() if name is None else [name]
        for each in names:
            self.by_name[each].paused = paused
        return names
