"""What the admin listener shows, for either way of running: one process, or a master.

A view answers `status()` (the JSON of `mailgate ctl status`, counters included)
and `health()` (the reasons the service is unhealthy). `ServiceView` reads a
single-process Service, `MasterView` a Master and its workers' heartbeats. Both
read the same lock-free sources as the control socket, so they answer while
every worker is wedged. A view holds a queue reader of its own: build it in the
thread that uses it and close it there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from mailgate.control.commands import ControlCommands

if TYPE_CHECKING:
    from mailgate.bootstrap import Service
    from mailgate.master.commands import MasterCommands
    from mailgate.master.master import Master


class AdminView(ABC):
    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Service state, health, processes and threads, queues and counters."""

    @abstractmethod
    def health(self) -> list[str]:
        """Why the service is unhealthy; empty when it is healthy."""

    @abstractmethod
    def close(self) -> None:
        """Release the view's queue reader."""


class ServiceView(AdminView):
    """The single-process service (`mailgate run --single-process`)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.commands = ControlCommands(service)

    def status(self) -> dict[str, Any]:
        return self.commands.status({})

    def health(self) -> list[str]:
        return self.service.health()

    def close(self) -> None:
        self.commands.close()


class MasterView(AdminView):
    """The master and its workers: counters merged from the workers' heartbeats."""

    def __init__(self, master: Master) -> None:
        from mailgate.master.commands import MasterCommands

        self.master = master
        self.commands: MasterCommands = MasterCommands(master)

    def status(self) -> dict[str, Any]:
        return self.commands.status({})

    def health(self) -> list[str]:
        return self.master.health()

    def close(self) -> None:
        self.commands.close()
