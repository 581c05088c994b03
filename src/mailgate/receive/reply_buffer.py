"""A session's transport that sends all the replies ready together in one write.

aiosmtpd writes each reply line on its own, so a multi-line EHLO reply leaves in several TCP
segments, and clients that read one reply per recv() get out of step. `ReplyBuffer` holds what
is written and hands it to the real transport once per turn of the event loop: the session runs
until it must wait (for the client's next bytes, a commit, a TLS handshake) and everything it
answered meanwhile goes out in one send, as Postfix's smtpd does. close() sends what is held
first; more than `limit` bytes held are sent at once, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

LIMIT = 64 * 1024


class ReplyBuffer(asyncio.Transport):
    def __init__(
        self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop, limit: int = LIMIT
    ) -> None:
        super().__init__()
        self.inner = inner
        self._loop = loop
        self._limit = limit
        self._held = bytearray()
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._held += data
        if len(self._held) >= self._limit:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is held to the real transport now (dropped if it is closing, as asyncio
        drops writes to a closed transport)."""
        if not self._held:
            return
        data = bytes(self._held)
        self._held.clear()
        if not self.inner.is_closing():
            self.inner.write(data)

    def write_now(self, data: bytes) -> None:
        """Send `data` at once, after anything held: for replies already gathered into one
        write (the session's fast path), which need no turn of the loop to be joined."""
        if self._held:
            self._held += data
            self.flush()
        elif not self.inner.is_closing():
            self.inner.write(data)

    def write_after_turn(self, data: bytes) -> None:
        """Hold `data` until the loop has run what is ready now and one turn more: the fast
        path's replies to the first of some pipelined commands, whose rest aiosmtpd's task
        answers in its next step, all leaving in one write."""
        self._held += data
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._loop.call_soon, self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def close(self) -> None:
        self.flush()
        self.inner.close()

    def abort(self) -> None:
        self._held.clear()
        self.inner.abort()

    def write_eof(self) -> None:
        self.flush()
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()  # what the old protocol wrote goes before anything of the new one
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def get_write_buffer_size(self) -> int:
        return len(self._held) + self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)
