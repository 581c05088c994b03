"""The admin listener's application: /metrics, /healthz, /status, and the dashboard.

`build_app` makes the Starlette application one life of the admin thread serves;
`AdminContext` is that life's state: its control surface (and so its read-only queue
reader), its event-store reader, the sample ring, the token. The three machine
endpoints answer byte for byte what the old listener did. The dashboard's pages are
pages.py, queue_pages.py and event_pages.py. Every endpoint is a coroutine (no thread
pool). A failing answer is a 500 naming the error and event 7003, never the end of
the thread. Reads need the token when one is set (auth.py); a refused request gets
401 with `WWW-Authenticate: Bearer` (and, for a browser, the login form).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mailgate.config.schema import Config
from mailgate.control.surface import ControlSurface
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.observe.eventstore import EventReader, store_path
from mailgate.queue.reader import QueueReader
from mailgate.supervise.handle import ThreadHandle
from mailgate.web import auth
from mailgate.web.metrics import StatusCollector
from mailgate.web.samples import SAMPLE_EVERY, SampleRing

OPEN_PATHS = ("/login", "/static/")  # what a browser needs to log in
MACHINE_PATHS = ("/metrics", "/healthz", "/status")


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
    ) -> None:
        self.view = view
        self.token = token
        self.samples = samples
        self.config = config
        self.events = events
        self.log_dir = log_dir
        self.handle: ThreadHandle | None = None
        self.in_flight = 0
        self._events: EventReader | None = None

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

    def sample_if_due(self) -> None:
        now = time.time()
        if now - self.samples.last_when >= SAMPLE_EVERY:
            self.samples.add(self.view.status(), now)

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


def _ctx(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.context
    return context


async def metrics_page(request: Request) -> Response:
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    status = _ctx(request).view.status()
    return text(200, encoder(StatusCollector(lambda: status)), content_type)


async def healthz(request: Request) -> Response:
    body = _ctx(request).view.health()
    return text(503 if body["reasons"] else 200, json_bytes(body), "application/json")


async def status_page(request: Request) -> Response:
    return text(200, json_bytes(_ctx(request).view.status()), "application/json")


class Guard:
    """Outermost: marks the thread busy while requests are answered, refuses unauthorized
    reads, and turns a failing answer into a 500 and event 7003."""

    def __init__(self, app: ASGIApp, context: AdminContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = self.context
        ctx.in_flight += 1
        if ctx.in_flight == 1 and ctx.handle is not None:
            ctx.handle.busy()
        try:
            await self._answer(scope, receive, send)
        finally:
            ctx.in_flight -= 1
            if ctx.in_flight == 0 and ctx.handle is not None:
                ctx.handle.progress()
                ctx.handle.idle()

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        path = request.url.path
        if not path.startswith(OPEN_PATHS) and not auth.may_read(request, self.context.token):
            await self._refuse(request, path)(scope, receive, send)
            return
        started = False

        async def tracking(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:  # a failing answer is an answer, never the end of the thread
            self.context.emit(catalog.ADMIN_REQUEST_FAILED, path=path, error=_error(exc))
            if not started:
                body = f"{type(exc).__name__}: {exc}\n".encode()
                await text(500, body)(scope, receive, send)

    @staticmethod
    def _refuse(request: Request, path: str) -> Response:
        challenge = {"WWW-Authenticate": "Bearer"}
        return text(401, b"unauthorized\n", **challenge)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


async def _not_found(request: Request, exc: Exception) -> Response:
    return text(404, b"not found\n")


async def _failed(request: Request, exc: Exception) -> Response:
    return text(500, f"{type(exc).__name__}: {exc}\n".encode())


def build_app(context: AdminContext) -> ASGIApp:
    routes = [
        Route("/metrics", metrics_page),
        Route("/healthz", healthz),
        Route("/status", status_page),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, Exception: _failed},
    )
    app.state.context = context
    return Guard(app, context)
