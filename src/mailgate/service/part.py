"""A part of a process: one stage or service, with its threads, and how it starts and stops.

A Host (host.py) calls, for each of its parts in order: `prepare` (open what can
fail, before any thread starts: ports, sockets, certificates; an error reaches the
caller and the parts prepared so far are closed), `start` (spawn its threads with
the supervisor), and at the end `halt`, then its threads are stopped phase by
phase (`threads`), then `close` and, after the last event, `flush`. In between the
host asks `health`, `summary` (systemd STATUS), `reload` (a validated new
configuration: build what will change, raise if it cannot, and return the step
that swaps it in) and, on the main thread, `tick`. Every hook does nothing unless
a part says otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from mailgate.config.schema import Config
from mailgate.supervise.supervisor import Supervisor

Apply = Callable[[], dict[str, Any] | None]


class Phase(enum.IntEnum):
    """When a part's threads stop, in this order; every other thread stops after them."""

    INTAKE = 1  # no new work: SMTP, pickup (the master: its worker watch)
    DELIVERY = 2  # interchange threads finish or give back their batch (the master: channel)
    SCHEDULE = 3
    COMMIT = 4  # the last commits of everything above: receivers before their committer


class Part:
    def prepare(self) -> None:
        """Open what can fail; raise before any thread of the process starts."""

    def start(self, sup: Supervisor) -> None:
        """Spawn this part's threads."""

    def tick(self) -> None:
        """The serve loop's turn, on the main thread (a few times a second)."""

    def wait_ready(self, deadline: float) -> None:
        """Return once serving, or at `deadline` (monotonic)."""

    def threads(self, phase: Phase) -> list[str]:
        """Names of this part's threads that stop in `phase`."""
        return []

    def halt(self, deadline: float) -> list[str]:
        """First step of a stop, before any thread stops; what did not stop by `deadline`."""
        return []

    def close(self) -> None:
        """After its threads stopped (or a failed start): close sockets and files."""

    def flush(self) -> None:
        """After the process's last event."""

    def abort(self) -> None:
        """The process leaves at once: end what would outlive it."""

    def health(self) -> list[str]:
        """Why this part is unhealthy; empty when it is not."""
        return []

    def reload(self, new: Config) -> Apply | None:
        """Prepare to take `new` (raise if it cannot be); the step that applies it."""
        return None

    def summary(self) -> str | None:
        """A few words for systemd's STATUS line."""
        return None

    def listen(self) -> str | None:
        """The SMTP address served, for event 1000."""
        return None

    def unclean(self) -> list[str]:
        """What stopped but not cleanly (worker processes), for the exit status."""
        return []
