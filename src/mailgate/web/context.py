"""One life of the admin thread: what the listener's endpoints read, and how they answer.

`AdminContext` holds the life's control surface (and so its read-only queue reader),
its event-store reader (opened when first needed), the sample ring and the token; it
is built and closed in the admin thread. The Guard (app.py) puts it in every request's
scope. `text` is a response with exactly the given bytes and Content-Type.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailgate.config.schema import Config
from mailgate.control.surface import ControlSurface
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.observe.eventstore import EventReader, store_path
from mailgate.queue.reader import QueueReader
from mailgate.supervise.handle import ThreadHandle
from mailgate.web.samples import SAMPLE_EVERY, SampleRing
from mailgate.web.stalls import StallWatch

SCOPE_KEY = "mailgate.admin"
STATUS_TTL = 1.0  # seconds the overview and the sampler share one status answer


class AdminContext:
    """One life of the admin thread: what its endpoints read, built and closed in it."""

    def __init__(
        self,
        view: ControlSurface,
        token: str,
        samples: SampleRing,
        config: Config | None,
        events: EventLog | None,
        log_dir: Path | None,
        stalls: StallWatch | None = None,
    ) -> None:
        self.view = view
        self.token = token
        self.samples = samples
        self.config = config
        self.events = events
        self.log_dir = log_dir
        self.stalls = stalls
        self.handle: ThreadHandle | None = None
        self.in_flight = 0
        self._events: EventReader | None = None
        self._status: tuple[float, dict[str, Any]] | None = None

    @property
    def read_only(self) -> bool:
        return not self.token

    def queue(self) -> QueueReader:
        return self.view.reader()

    def event_reader(self) -> EventReader | None:
        """The event store (read-only), once it exists."""
        if self._events is None and self.log_dir is not None:
            self._events = EventReader.open(store_path(self.log_dir))
        return self._events

    def recent_status(self) -> dict[str, Any]:
        """A status answer at most STATUS_TTL old: with a big queue its counts cost tens of
        milliseconds, and the sampler and every viewer of the overview need the same one."""
        now = time.monotonic()
        if self._status is None or now - self._status[0] > STATUS_TTL:
            self._status = (now, self.view.status())
        return self._status[1]

    def sample_if_due(self) -> None:
        now = time.time()
        if now - self.samples.last_when >= SAMPLE_EVERY:
            count = self.stalls.count if self.stalls is not None else 0
            self.samples.add(self.recent_status(), now, count)

    def emit(self, event: catalog.EventType, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        self.view.close()


def text(code: int, body: bytes, content_type: str = "text/plain", **headers: str) -> Response:
    """A response with exactly these bytes and Content-Type (no charset added)."""
    return Response(
        body,
        code,
        headers={"Content-Type": content_type, "Cache-Control": "no-store", **headers},
    )


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=str).encode() + b"\n"


def context_of(request: Request) -> AdminContext:
    """The life's context, which the Guard puts in every request's scope."""
    context: AdminContext = request.scope[SCOPE_KEY]
    return context
