"""The SMTP listener thread: an asyncio loop serving ReceiveHandler sessions.

The listening socket is bound by the caller before the thread starts, so a bad
address or a port in use is reported at start-up, not lost in a thread. On stop
the listener closes at once, sessions waiting for a commit get up to the grace
period to finish, and every other session is told "421 4.3.2" and closed.
No thread pool is used (the loop never resolves names), so every thread in the
process stays a supervised one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

from mailgate.receive.session import MailgateSMTP
from mailgate.receive.smtp import ReceiveHandler
from mailgate.supervise.handle import ThreadHandle
from mailgate.testing import faults

SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later\r\n"


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind the listening socket (numeric or resolvable host); OSError reaches the caller.

    With `reuse_port`, several processes bind the same port (SO_REUSEPORT) and the
    kernel spreads connections among those listening. The master binds one without
    listening to reserve the port and learn it (port 0) before its workers start.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP. Without it, replies to pipelined commands wait on
    # Nagle and the client's delayed ACK (about 40 ms each).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(address)
        if listen:
            sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class SmtpListener:
    """Body of the `smtp` thread. `request_stop` may be called from any thread."""

    def __init__(
        self,
        handler: ReceiveHandler,
        sock: socket.socket,
        grace: float = 10.0,
        tls_sock: socket.socket | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.tls_sock = tls_sock  # the implicit-TLS listener (port 465 style), if any
        self.tls_context = tls_context
        self._tls_bound = tls_sock.getsockname()[:2] if tls_sock is not None else ("", 0)
        self.handler = handler
        self.sock = sock
        self._bound = sock.getsockname()[:2]
        self._reuse_port = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        self.grace = grace
        self.sessions: set[MailgateSMTP] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)

    def __call__(self, handle: ThreadHandle) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(handle))
        finally:
            self._loop = None
            loop.close()

    def _factory(self, implicit_tls: bool = False) -> MailgateSMTP:
        faults.check("receive.loop")  # tests: a callback that wedges the event loop
        protocol = self.handler.protocol(implicit_tls)
        self.sessions.add(protocol)
        counters = self.handler.counters
        counters.add("mailgate_smtp_sessions_total")
        counters.gauge("mailgate_smtp_sessions_open", 1)
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            if protocol in self.sessions:
                counters.gauge("mailgate_smtp_sessions_open", -1)
            self.sessions.discard(protocol)
            original(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        return protocol

    async def _serve(self, handle: ThreadHandle) -> None:
        self._stop = asyncio.Event()
        if handle.stopping:
            return
        loop = asyncio.get_running_loop()
        if self.sock.fileno() == -1:  # closed by a previous life of this thread: bind again
            self.sock = bind(*self._bound, reuse_port=self._reuse_port)
        server = await loop.create_server(self._factory, sock=self.sock)
        servers = [server]
        if self.tls_sock is not None and self.tls_sock.fileno() == -1:
            self.tls_sock = bind(*self._tls_bound, reuse_port=self._reuse_port)
        if self.tls_sock is not None and self.tls_context is not None:
            servers.append(
                await loop.create_server(
                    lambda: self._factory(implicit_tls=True),
                    sock=self.tls_sock,
                    ssl=self.tls_context,
                    ssl_handshake_timeout=30,
                )
            )
        # Busy for as long as it serves, heart-beating once a second from the loop itself: a
        # callback that never returns stops the heartbeat, and the supervisor reports the
        # thread stalled with its stack (Q151669). An idle thread would never be.
        handle.busy()
        try:
            while not self._stop.is_set() and not handle.stopping:
                handle.progress()  # a heartbeat: the loop is alive and turning
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
        finally:
            for each in servers:
                each.close()
            await self._drain()

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while self.handler.committing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            transport = session.transport
            if isinstance(transport, asyncio.WriteTransport):
                with contextlib.suppress(Exception):
                    transport.write(SHUTDOWN_REPLY)
                    transport.close()
        await asyncio.sleep(0)
