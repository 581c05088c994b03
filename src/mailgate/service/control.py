"""The control part of the process that holds the data directory lock.

It binds the control socket (owner-only, under <data-dir>/run) and the admin HTTP
listener in `prepare`, so a port in use stops the start, and runs `control`,
`admin` and the event store's writer (`events`, behind `mailgate events`). The
socket and the listener answer with the process's control surface (control/), a
fresh one per thread life; `flush` stores the events written after the writer
stopped (the final ServiceStopped among them).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailgate.config.schema import Config
from mailgate.control.server import ControlServer, bind_control, socket_path
from mailgate.control.surface import ControlSurface
from mailgate.observe.events import EventLog
from mailgate.observe.eventwriter import EventStoreWriter, attach_event_store
from mailgate.service.part import Part
from mailgate.supervise.supervisor import Supervisor

if TYPE_CHECKING:
    from mailgate.web.admin import AdminServer


class ControlPart(Part):
    def __init__(
        self, config: Config, events: EventLog, surface: Callable[[], ControlSurface]
    ) -> None:
        self.config = config
        self.events = events
        self.surface = surface
        self.socket: socket.socket | None = None
        self.admin: AdminServer | None = None
        self.event_store: EventStoreWriter | None = None

    def prepare(self) -> None:
        self.socket = bind_control(socket_path(self.config.data_dir))
        self.admin = None
        if self.config.admin.listen:  # uvicorn and Starlette only then: 40 ms of a start
            from mailgate.web.admin import open_admin

            self.admin = open_admin(self.config.admin, self.surface, self.config, self.events)

    def start(self, sup: Supervisor) -> None:
        log = self.config.log
        if log.store_events:
            self.event_store = attach_event_store(
                self.events, self.config.log_dir, log.store_events
            )
            sup.spawn("events", "events", self.event_store, on_stop=self.event_store.wake)
        assert self.socket is not None, "prepared"
        sup.spawn("control", "control", ControlServer(self.socket, self.surface), critical=True)
        if self.admin is not None:
            sup.spawn("admin", "admin", self.admin)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            socket_path(self.config.data_dir).unlink(missing_ok=True)
        if self.admin is not None:
            self.admin.close()

    def flush(self) -> None:
        if self.event_store is not None:
            with contextlib.suppress(Exception):
                self.event_store.flush()
