"""A small real SMTP/LMTP server (asyncio, on a loopback port) that speaks CHUNKING (RFC 3030).

aiosmtpd has no BDAT, so this one is written for the client's tests: EHLO (LHLO with
`lmtp`) advertises CHUNKING, and PIPELINING unless `pipelining` is False; MAIL, RCPT, BDAT,
DATA (dot-unstuffed), RSET, NOOP and QUIT. It records each message (sender, recipients,
content, the BDAT sizes), every command line and how many reads each connection took, so a
test can see that a transaction came in one write. Failures are injected: a RCPT refused
for an address, the Nth chunk of a message refused, an LMTP recipient's reply after the
last chunk. Written independently of mailgate's own receive side, so that the client is
not tested against its own reading of the RFC.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

from tests.support.process import free_port


@dataclass
class Message:
    sender: str
    recipients: list[str]
    content: bytes
    chunks: list[int]  # the size of each BDAT, in order; [] for DATA


@dataclass
class _Transaction:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    chunks: list[int] = field(default_factory=list)
    failed: bool = False  # a chunk was refused: what follows is refused too


class BdatSink:
    def __init__(self, *, lmtp: bool = False, pipelining: bool = True) -> None:
        self.lmtp = lmtp
        self.pipelining = pipelining
        self.port = free_port()
        self.messages: list[Message] = []
        self.commands: list[bytes] = []
        self.reads: list[int] = []  # per connection: the reads that brought data
        self.refuse_rcpt: dict[str, str] = {}
        self.refuse_chunk: dict[int, str] = {}  # 1-based chunk number of a message -> reply
        self.lmtp_replies: dict[str, str] = {}  # recipient -> its reply after LAST
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    # --- running ---------------------------------------------------------------------------------
    def __enter__(self) -> BdatSink:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)

    def wait_messages(self, count: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} of {count} messages in {timeout}s")
            time.sleep(0.02)
        return list(self.messages)

    # --- one session -----------------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = len(self.reads)
        self.reads.append(0)
        buffer = bytearray()

        async def more() -> bool:
            got = await reader.read(1 << 16)
            if got:
                self.reads[connection] += 1
                buffer.extend(got)
            return bool(got)

        async def line() -> bytes | None:
            while b"\r\n" not in buffer:
                if not await more():
                    return None
            end = buffer.index(b"\r\n") + 2
            taken = bytes(buffer[:end])
            del buffer[:end]
            return taken

        async def exactly(n: int) -> bytes | None:
            while len(buffer) < n:
                if not await more():
                    return None
            taken = bytes(buffer[:n])
            del buffer[:n]
            return taken

        out: list[bytes] = []

        def reply(text: str) -> None:
            out.append(text.encode() + b"\r\n")

        async def flush() -> None:
            # Like a pipelining server: replies wait while more commands are already here.
            if out and not buffer:
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()

        t = _Transaction()
        writer.write(b"220 bdat-sink ESMTP\r\n")
        try:
            while (command := await line()) is not None:
                self.commands.append(command)
                verb, _, arg = command.rstrip(b"\r\n").decode("utf-8", "replace").partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "LHLO"):
                    keywords = ["SIZE 100000000", "8BITMIME", "CHUNKING"]
                    if self.pipelining:
                        keywords.append("PIPELINING")
                    lines = ["bdat-sink", *keywords]
                    out.append(
                        "".join(
                            f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                            for i, text in enumerate(lines)
                        ).encode()
                    )
                    t = _Transaction()
                elif verb == "MAIL":
                    t = _Transaction(sender=_address(arg))
                    reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    address = _address(arg)
                    if t.sender is None:
                        reply("503 5.5.1 need MAIL")
                    elif address in self.refuse_rcpt:
                        reply(self.refuse_rcpt[address])
                    else:
                        t.recipients.append(address)
                        reply("250 2.1.5 Ok")
                elif verb == "BDAT":
                    t = await self._bdat(t, arg, exactly, reply)
                    if t is None:
                        return
                elif verb == "DATA":
                    if not t.recipients:
                        reply("503 5.5.1 need RCPT")
                    else:
                        reply("354 go ahead")
                        await flush()
                        body = bytearray()
                        while (got := await line()) not in (None, b".\r\n"):
                            assert got is not None
                            body += got[1:] if got.startswith(b".") else got
                        self._deliver(t, bytes(body), reply)
                        t = _Transaction()
                elif verb == "RSET":
                    t = _Transaction()
                    reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    reply("221 2.0.0 Bye")
                    buffer.clear()
                    await flush()
                    return
                else:
                    reply("500 5.5.2 unknown command")
                await flush()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _bdat(self, t: _Transaction, arg: str, exactly, reply) -> _Transaction | None:  # type: ignore[no-untyped-def]
        parts = arg.split()
        if (
            not parts
            or not parts[0].isdigit()
            or len(parts) > 2
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            reply("501 5.5.4 Syntax: BDAT count [LAST]")
            return t
        size, last = int(parts[0]), len(parts) == 2
        data = await exactly(size)
        if data is None:
            return None
        if t.sender is None or not t.recipients:
            reply("503 5.5.1 need MAIL and RCPT")
            return _Transaction()
        t.chunks.append(size)
        number = len(t.chunks)
        if t.failed:
            reply("503 5.5.1 transaction failed")
            return _Transaction() if last else t
        if number in self.refuse_chunk:
            reply(self.refuse_chunk[number])
            t.failed = True
            return _Transaction() if last else t
        t.data += data
        if not last:
            reply(f"250 2.0.0 {size} octets received")
            return t
        self._deliver(t, bytes(t.data), reply)
        return _Transaction()

    def _deliver(self, t: _Transaction, content: bytes, reply) -> None:  # type: ignore[no-untyped-def]
        assert t.sender is not None
        with self._lock:
            self.messages.append(Message(t.sender, list(t.recipients), content, list(t.chunks)))
        if not self.lmtp:
            reply("250 2.0.0 Ok: queued")
            return
        for address in t.recipients:
            reply(self.lmtp_replies.get(address, f"250 2.0.0 <{address}> delivered"))


def _address(arg: str) -> str:
    with contextlib.suppress(ValueError):
        start, end = arg.index("<"), arg.index(">")
        return arg[start + 1 : end]
    return arg
