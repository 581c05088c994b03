"""The SMTP listener thread: an asyncio loop serving ReceiveHandler sessions.

The listening sockets are opened before the thread starts (listeners.py), so a bad
address or a port in use is reported at start-up, naming the holder, not lost in a
thread; in a receive worker they are the master's, inherited. Each life of the thread
accepts on a duplicate of them, one connection per wake-up (accept.py), so a restart
needs no new bind and a burst of clients is spread over the workers. On stop the
listener closes at once, sessions waiting for a commit get up to the grace period to
finish, and every other session is told "421 4.3.2" and closed. No thread pool is used
(the loop never resolves names), so every thread in the process stays a supervised one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

import uvloop

from mailgate.observe import metrics
from mailgate.receive.accept import Acceptor
from mailgate.receive.chunking import read_chunks_before_starttls
from mailgate.receive.session import MailgateSMTP, skip_disabled_command_logs
from mailgate.receive.smtp import ReceiveHandler
from mailgate.supervise import faults
from mailgate.supervise.handle import ThreadHandle

# The loop heart-beats this often: well under the smallest useful [supervise] stall_after
# (1 s), so a turning loop is never taken for a wedged one.
HEARTBEAT = 0.2
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later\r\n"


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of `kind` ([smtp] event_loop): uvloop's or asyncio's own."""
    if kind == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


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
        skip_disabled_command_logs()
        read_chunks_before_starttls()
        self.tls_sock = tls_sock  # the implicit-TLS listener (port 465 style), if any
        self.tls_context = tls_context
        self.handler = handler
        self.sock = sock
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
        loop = new_loop(self.handler.settings.event_loop)
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
        counters.add(metrics.SMTP_SESSIONS)
        counters.gauge(metrics.SMTP_SESSIONS_OPEN, 1)
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            if protocol in self.sessions:
                counters.gauge(metrics.SMTP_SESSIONS_OPEN, -1)
            self.sessions.discard(protocol)
            original(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        return protocol

    async def _serve(self, handle: ThreadHandle) -> None:
        self._stop = asyncio.Event()
        if handle.stopping:
            return
        loop = asyncio.get_running_loop()
        # Each life accepts on a duplicate: closing it leaves the socket itself open (and
        # listening) for the next life of this thread.
        acceptors = [Acceptor(loop, self.sock.dup(), self._factory)]
        if self.tls_sock is not None and self.tls_context is not None:
            acceptors.append(
                Acceptor(
                    loop,
                    self.tls_sock.dup(),
                    lambda: self._factory(implicit_tls=True),
                    tls=self.tls_context,
                )
            )
        # Busy for as long as it serves, heart-beating once a second from the loop itself: a
        # callback that never returns stops the heartbeat, and the supervisor reports the
        # thread stalled with its stack (Q151669). An idle thread would never be.
        handle.busy()
        for acceptor in acceptors:
            acceptor.start()
        try:
            while not self._stop.is_set() and not handle.stopping:
                handle.progress()  # a heartbeat: the loop is alive and turning
                faults.check("receive.listener")  # tests: a crash of a serving listener
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), HEARTBEAT)
        finally:
            for acceptor in acceptors:
                acceptor.close()
            if self._stop.is_set():
                # Asked to stop (request_stop): refuse new connections from now on. Not on
                # a crash, nor for a life abandoned as stalled: the next life serves them.
                self.close()
            await self._drain()

    def close(self) -> None:
        """Close the listening sockets (this process's hold on them; a master keeps its own)."""
        for sock in (self.sock, self.tls_sock):
            if sock is not None:
                sock.close()

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
