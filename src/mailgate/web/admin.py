"""The admin HTTP listener: /metrics, /healthz, /status and the dashboard, on uvicorn.

One supervised thread (`admin`) runs an asyncio loop with a uvicorn server serving the
Starlette application of app.py. The socket is bound at start (`open_admin`), so a port
in use stops the start as the SMTP port does; each life of the thread serves a
duplicate of it (uvicorn closes the sockets it served), so a restarted thread serves
the same port. uvicorn gets no signal handlers (it runs off the main thread, where it
installs none), no logging configuration and no access log: nothing is logged per
request, so no token, cookie or client text reaches a log.

Every endpoint is a coroutine run on this loop (none goes to a thread pool, which would
start threads the supervisor does not know): the heartbeat task reports progress while
the loop turns, and marks the thread busy while a request is being answered, so a
request that blocks the loop makes the thread stall and be replaced like any other.
A stop request sets the server's `should_exit`; open connections get a second to end.

Security: loopback by default; bound anywhere else it needs a token (the configuration
is refused without one). The token, its cookie and CSRF are app.py's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from mailgate.config.schema import AdminSettings, Config, parse_hostport
from mailgate.control.surface import ControlSurface
from mailgate.observe.events import EventLog
from mailgate.supervise.handle import ThreadHandle
from mailgate.web.context import AdminContext
from mailgate.web.samples import SampleRing
from mailgate.web.stalls import StallWatch

BEAT = 0.25  # seconds between heartbeats (and checks of the stop flag)
GRACE = 1  # seconds open connections get to end at a stop
MAX_CONNECTIONS = 64  # more at once are answered 503: a flood cannot exhaust descriptors


def _quiet_uvicorn() -> None:
    """uvicorn's loggers write nothing: a malformed request would otherwise reach stderr
    (through logging's last resort) at a client's will."""
    quiet = logging.getLogger("uvicorn")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())


def bind_admin(listen: str) -> socket.socket:
    """The listening socket for `listen` (HOST:PORT); OSError reaches the caller."""
    host, port = parse_hostport(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, proto, _, address = infos[0]
    # The protocol number matters: asyncio turns Nagle off only on sockets that say TCP,
    # and with Nagle on, a keep-alive client waits 40 ms (its delayed ACK) for each page.
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class AdminServer:
    """Body of the `admin` thread; `surface` builds the thread's own control surface (the
    one the control socket answers with) at each start. The sample ring outlives the
    thread's lives: a restarted thread keeps drawing the same chart."""

    def __init__(
        self,
        sock: socket.socket,
        surface: Callable[[], ControlSurface],
        token: str,
        config: Config | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.sock = sock
        self.surface = surface
        self._token = token
        self.config = config
        self.events = events
        _quiet_uvicorn()
        self.samples = SampleRing()
        self.stalls = StallWatch()
        if events is not None:
            events.add_sink(self.stalls)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def __call__(self, handle: ThreadHandle) -> None:
        view = self.surface()
        log_dir = None if self.config is None else Path(self.config.log_dir)
        context = AdminContext(
            view, self._token, self.samples, self.config, self.events, log_dir, self.stalls
        )
        try:
            asyncio.run(self._serve(handle, context))
        finally:
            context.close()

    async def _serve(self, handle: ThreadHandle, context: AdminContext) -> None:
        from mailgate.web.app import build_app

        config = uvicorn.Config(
            build_app(context),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE,
            timeout_keep_alive=5,
            limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=16 * 1024,
        )
        server = uvicorn.Server(config)
        beat = asyncio.create_task(self._heartbeat(handle, server, context))
        try:
            await server.serve(sockets=[self.sock.dup()])
        finally:
            beat.cancel()

    @staticmethod
    async def _heartbeat(handle: ThreadHandle, server: uvicorn.Server, ctx: AdminContext) -> None:
        """Progress while the loop turns (app.py marks the thread busy while it answers);
        the chart's samples when due."""
        ctx.handle = handle
        while not handle.stopping:
            handle.progress()
            ctx.sample_if_due()
            await asyncio.sleep(BEAT)
        server.should_exit = True

    def close(self) -> None:
        self.sock.close()


def open_admin(
    settings: AdminSettings,
    surface: Callable[[], ControlSurface],
    config: Config | None = None,
    events: EventLog | None = None,
) -> AdminServer | None:
    """Bind the admin listener of `settings`; None when it is disabled (listen = "")."""
    if not settings.listen:
        return None
    try:
        sock = bind_admin(settings.listen)
    except OSError as exc:  # say which listener: the SMTP port fails with the same words
        raise OSError(exc.errno, f"admin listener {settings.listen}: {exc.strerror}") from None
    return AdminServer(sock, surface, settings.token, config, events)
