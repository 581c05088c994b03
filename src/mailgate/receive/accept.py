"""Accepting SMTP connections one per wake-up, so the receive workers sharing a socket
share its clients.

asyncio's server accepts every connection waiting each time the socket is readable: on a
socket that several processes share, the first one awake takes the whole burst. One
connection per wake-up leaves the next to whichever worker is free first. A failure that
belongs to one connection (the client gave up first) is ignored; running out of file
descriptors or memory pauses accepting for a second, as asyncio's own server does; any
other error reaches the loop's exception handler. A TLS handshake that fails ends that
connection only.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable

PAUSE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 30.0,
    ) -> None:
        self.loop, self.sock, self.factory = loop, sock, factory
        self.tls, self.handshake_timeout = tls, handshake_timeout
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False
        sock.setblocking(False)

    def start(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting and close this socket (sessions already accepted go on)."""
        if not self._closed:
            self._closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _ready(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client left first
        except OSError as exc:
            if exc.errno not in PAUSE_ERRNOS:
                raise
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(1.0, self.start)
            return
        conn.setblocking(False)
        task = self.loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> object:
        try:
            return await self.loop.connect_accepted_socket(
                self.factory,
                conn,
                ssl=self.tls,
                ssl_handshake_timeout=self.handshake_timeout if self.tls else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError):
            conn.close()  # a failed handshake or a client gone: this connection only
            return None
