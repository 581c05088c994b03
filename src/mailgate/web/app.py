"""The admin listener's application: /metrics, /healthz, /status, and the dashboard.

`build_app` makes the Starlette application one life of the admin thread serves, over
that life's AdminContext (context.py). The three machine
endpoints answer byte for byte what the old listener did. The dashboard's pages are
pages.py, queue_pages.py and event_pages.py. Every endpoint is a coroutine (no thread
pool). A failing answer is a 500 naming the error and event 7003, never the end of
the thread. Reads need the token when one is set (auth.py); a refused request gets
401 with `WWW-Authenticate: Bearer` (and, for a browser, the login form).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mailgate.observe import catalog
from mailgate.web import auth
from mailgate.web.context import SCOPE_KEY, AdminContext, context_of, json_bytes, text
from mailgate.web.metrics import StatusCollector

# What a browser needs to log in, and the action endpoint, which checks more itself (the
# token or its cookie and CSRF) and answers a refusal with 403 and event 7001.
OPEN_PATHS = ("/login", "/queue/action")
STATIC = "/static/"
MACHINE_PATHS = ("/metrics", "/healthz", "/status")


async def metrics_page(request: Request) -> Response:
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    status = context_of(request).view.status()
    return text(200, encoder(StatusCollector(lambda: status)), content_type)


async def healthz(request: Request) -> Response:
    body = context_of(request).view.health()
    return text(503 if body["reasons"] else 200, json_bytes(body), "application/json")


async def status_page(request: Request) -> Response:
    return text(200, json_bytes(context_of(request).view.status()), "application/json")


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
        scope[SCOPE_KEY] = ctx
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
        open_path = path in OPEN_PATHS or path.startswith(STATIC)
        if not open_path and not auth.may_read(request, self.context.token):
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
        if path in MACHINE_PATHS or "text/html" not in request.headers.get("accept", ""):
            return text(401, b"unauthorized\n", **challenge)
        from mailgate.web.pages import login_form

        return login_form(request, 401, challenge)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


async def _not_found(request: Request, exc: Exception) -> Response:
    return text(404, b"not found\n")


async def _failed(request: Request, exc: Exception) -> Response:
    return text(500, f"{type(exc).__name__}: {exc}\n".encode())


def build_app(context: AdminContext) -> ASGIApp:
    from mailgate.web import event_pages, pages, queue_pages

    routes = [
        Route("/metrics", metrics_page),
        Route("/healthz", healthz),
        Route("/status", status_page),
        *pages.routes(),
        *queue_pages.routes(),
        *event_pages.routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, Exception: _failed},
    )
    return Guard(app, context)
