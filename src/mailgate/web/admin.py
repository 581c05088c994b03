"""The admin HTTP listener: /metrics (Prometheus), /healthz and /status.

One supervised thread serves one request at a time with the standard library's
request handler and no server threads, so no thread escapes supervision. A
client gets CLIENT_TIMEOUT seconds in all to send its request head, and its
socket keeps that timeout for the answer: a slow or hostile client holds the
thread for seconds, not forever. The socket is bound at start, so a port in use
stops the start as the SMTP port does.

Security: loopback by default. Bound anywhere else it needs a token (the
configuration is refused without one); with a token every request must carry
`Authorization: Bearer TOKEN`, compared in constant time, else 401. Nothing is
logged per request, so the token never reaches a log or an event.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import secrets
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import choose_encoder

from mailgate.config.schema import AdminSettings, parse_hostport
from mailgate.control.surface import ControlSurface
from mailgate.supervise.handle import ThreadHandle
from mailgate.web.metrics import StatusCollector

CLIENT_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024
POLL = 0.5
INDEX = b"""mailgate admin
/metrics  Prometheus metrics
/healthz  200 when healthy, 503 with the reasons when not
/status   the service's status (as `mailgate ctl status --json`)
"""
_NO_SERVER: Any = None  # the handler is driven directly, without a socketserver


def bind_admin(listen: str) -> socket.socket:
    """The listening socket for `listen` (HOST:PORT); OSError reaches the caller."""
    host, port = parse_hostport(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class AdminServer:
    """Body of the `admin` thread; `surface` builds the thread's own control surface (the
    one the control socket answers with) at each start."""

    def __init__(
        self, sock: socket.socket, surface: Callable[[], ControlSurface], token: str
    ) -> None:
        self.sock = sock
        self.surface = surface
        self._token = token

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def __call__(self, handle: ThreadHandle) -> None:
        view = self.surface()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.sock, selectors.EVENT_READ)
                while not handle.stopping:
                    handle.progress()  # a heartbeat: the loop is alive
                    if not selector.select(timeout=POLL):
                        continue
                    try:
                        client, address = self.sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    with client:
                        self._serve(handle, client, address, view)
        finally:
            view.close()

    def _serve(
        self, handle: ThreadHandle, client: socket.socket, address: Any, view: ControlSurface
    ) -> None:
        handle.busy()
        handle.on_abort(lambda: client.shutdown(socket.SHUT_RDWR))
        try:
            _Handler(client, address, view, self._token)
        except OSError:
            pass  # the client went away or was too slow: its problem
        finally:
            handle.on_abort(None)
            handle.idle()

    def close(self) -> None:
        self.sock.close()


def open_admin(
    settings: AdminSettings, surface: Callable[[], ControlSurface]
) -> AdminServer | None:
    """Bind the admin listener of `settings`; None when it is disabled (listen = "")."""
    if not settings.listen:
        return None
    try:
        sock = bind_admin(settings.listen)
    except OSError as exc:  # say which listener: the SMTP port fails with the same words
        raise OSError(exc.errno, f"admin listener {settings.listen}: {exc.strerror}") from None
    return AdminServer(sock, surface, settings.token)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "mailgate-admin"
    sys_version = ""
    timeout = CLIENT_TIMEOUT

    def __init__(
        self, client: socket.socket, address: Any, view: ControlSurface, token: str
    ) -> None:
        self.view = view
        self.token = token
        super().__init__(client, address, _NO_SERVER)

    def setup(self) -> None:
        """Read the whole request head within the deadline, then parse it from memory."""
        super().setup()
        self.rfile.close()  # the socket's own reader: the head is read below, with a deadline
        self.rfile = io.BytesIO(_read_head(self.connection, time.monotonic() + CLIENT_TIMEOUT))

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing per request: no log line can carry a token or a client's text."""

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        if not self._authorized():
            self._send(401, b"unauthorized\n", "text/plain", head, {"WWW-Authenticate": "Bearer"})
            return
        try:
            code, body, content_type = self._answer(self.path.split("?", 1)[0])
        except Exception as exc:  # a failing answer is an answer, never the end of the thread
            code, body, content_type = 500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain"
        self._send(code, body, content_type, head)

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            status = self.view.status()
            return 200, encoder(StatusCollector(lambda: status)), content_type
        if path == "/healthz":
            body = self.view.health()
            return 503 if body["reasons"] else 200, _json(body), "application/json"
        if path == "/status":
            return 200, _json(self.view.status()), "application/json"
        if path == "/":
            return 200, INDEX, "text/plain; charset=utf-8"
        return 404, b"not found\n", "text/plain"

    def _authorized(self) -> bool:
        if not self.token:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=str).encode() + b"\n"


def _read_head(client: socket.socket, deadline: float) -> bytes:
    """Bytes up to the blank line ending the request head (or what came before the
    deadline or the size limit: the handler then answers 400 or nothing)."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_HEAD:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        client.settimeout(left)
        try:
            chunk = client.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    with contextlib.suppress(OSError):
        client.settimeout(CLIENT_TIMEOUT)
    return data
