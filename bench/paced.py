"""An open-loop SMTP client for bench/latency.py: messages sent at fixed intervals, not as fast
as the server answers.

Message i is due at start + i / rate. A producer puts each number on a queue at its due time;
`connections` persistent sessions (EHLO once, then MAIL, RCPT, DATA one at a time, as
smtp-source does) take the next one when free. A message taken late (every session busy, or
the client itself short of CPU) keeps its due time: its lag (taken - due) is recorded, so a
client that falls behind shows in the figures instead of silently lowering the offered rate.
Per message it records the queue id from the 250 reply and DATA-to-250 (final "." written
to the reply read). Every read has a deadline; a session that fails records its error and the
rest go on. Loopback only, no TLS, no authentication: a measuring tool, not a mail client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from throughput import message_filler, message_header

SENDER = "sender@bench.test"
REPLY_TIMEOUT = 30.0


@dataclass
class Sent:
    number: int
    due: float  # monotonic
    lag: float  # taken by a session - due, seconds
    data_to_250: float  # seconds
    queue_id: str


@dataclass
class PacedResult:
    offered: int = 0
    started: float = 0.0  # monotonic time of message 0's due time
    started_wall: float = 0.0
    finished: float = 0.0  # monotonic time of the last reply
    sent: list[Sent] = field(default_factory=list)
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        span = self.finished - self.started
        return len(self.sent) / span if span > 0 else 0.0


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) reply; its last line."""
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            return line


def queue_id_of(line: bytes) -> str:
    """The id from mailgate's `250 2.0.0 Ok: queued as ID` ("" if there is none)."""
    text = line.decode(errors="replace").strip()
    return text.rsplit(" ", 1)[-1] if "queued as" in text else ""


async def session(
    port: int, recipient: str, body: bytes, todo: asyncio.Queue[tuple[int, float] | None],
    result: PacedResult,
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not (await reply(reader)).startswith(b"220"):
            raise ConnectionError("no 220 greeting")
        writer.write(b"EHLO bench.client\r\n")
        if not (await reply(reader)).startswith(b"250"):
            raise ConnectionError("EHLO refused")
        while (item := await todo.get()) is not None:
            number, due = item
            lag = time.monotonic() - due
            answers = []
            for command in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{recipient}>", "DATA"):
                writer.write(command.encode() + b"\r\n")
                answers.append(await reply(reader))
            if not answers[2].startswith(b"354"):
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"MAIL/RCPT/DATA answered {answers!r}")
                continue
            writer.write(message_header(number, recipient) + body + b".\r\n")
            written = time.monotonic()
            line = await reply(reader)
            result.finished = now = time.monotonic()
            if line.startswith(b"250"):
                result.sent.append(Sent(number, due, lag, now - written, queue_id_of(line)))
            else:
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"after DATA: {line!r}")
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def produce(
    todo: asyncio.Queue[tuple[int, float] | None], rate: float, count: int, start: float,
    sessions: int,
) -> None:  # fmt: skip
    for number in range(count):
        due = start + number / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        todo.put_nowait((number, due))
    for _ in range(sessions):
        todo.put_nowait(None)


async def drive(
    port: int, recipient: str, *, rate: float, seconds: float, connections: int, size: int
) -> PacedResult:
    """Send round(rate * seconds) messages of about `size` bytes at `rate` per second."""
    count = max(1, round(rate * seconds))
    result = PacedResult(offered=count)
    body = message_filler(len(message_header(0, recipient)), size)
    todo: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    sessions = [
        asyncio.create_task(session(port, recipient, body, todo, result))
        for _ in range(connections)
    ]
    await asyncio.sleep(0.2)  # let every session connect and say EHLO before the clock starts
    result.started, result.started_wall = time.monotonic(), time.time()
    producer = asyncio.create_task(produce(todo, rate, count, result.started, connections))
    outcomes = await asyncio.gather(*sessions, return_exceptions=True)
    producer.cancel()  # done already, unless every session failed
    with contextlib.suppress(asyncio.CancelledError):
        await producer
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors.append(f"session failed: {outcome!r}")
    return result
