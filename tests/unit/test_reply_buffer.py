"""ReplyBuffer: one write per turn of the event loop, nothing lost at close, bounded memory."""

from __future__ import annotations

import asyncio

from mailgate.receive.reply_buffer import ReplyBuffer


class Recorder(asyncio.Transport):
    """A transport that records its calls (the real one is exercised end to end)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_turn_leave_in_one_write() -> None:
    async def main() -> list[bytes]:
        inner = Recorder()
        buffer = ReplyBuffer(inner, asyncio.get_running_loop())
        for line in (b"250-a\r\n", b"250-b\r\n", b"250 c\r\n"):
            buffer.write(line)
        assert inner.writes == [] and buffer.get_write_buffer_size() == 21
        await asyncio.sleep(0)  # the session waits: the loop turns
        buffer.write(b"250 next\r\n")
        await asyncio.sleep(0)
        return inner.writes

    assert asyncio.run(main()) == [b"250-a\r\n250-b\r\n250 c\r\n", b"250 next\r\n"]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        inner = Recorder()
        buffer = ReplyBuffer(inner, loop)
        buffer.write(b"221 2.0.0 Bye\r\n")
        buffer.close()
        assert inner.writes == [b"221 2.0.0 Bye\r\n"] and inner.closed
        await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
        other = Recorder()
        buffer = ReplyBuffer(other, loop)
        buffer.write(b"250 lost\r\n")
        buffer.abort()
        await asyncio.sleep(0)
        assert other.writes == [] and other.aborted

    asyncio.run(main())


def test_a_large_backlog_is_sent_at_once() -> None:
    async def main() -> list[bytes]:
        inner = Recorder()
        buffer = ReplyBuffer(inner, asyncio.get_running_loop(), limit=100)
        buffer.write(b"x" * 60)
        buffer.write(b"y" * 60)  # over the limit: no waiting for the loop
        assert inner.writes == [b"x" * 60 + b"y" * 60]
        buffer.write(b"z")
        await asyncio.sleep(0)
        return inner.writes

    assert asyncio.run(main()) == [b"x" * 60 + b"y" * 60, b"z"]
