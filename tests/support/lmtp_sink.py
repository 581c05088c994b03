"""A real LMTP server on loopback (aiosmtpd's LMTP) that answers per recipient as scripted.

`LmtpSink` is tests/support/sink.py's Sink speaking LMTP: after the message it gives one
reply per accepted recipient, 250 unless `sink.fail("DELIVER", "452 4.2.2 full",
address=...)` says otherwise; `sink.fail("DATA-COMMAND", "554 5.5.1 no")` refuses DATA
itself; `sink.drop_after(n)` closes the connection after n of the per-recipient replies
(a server that dies mid-delivery). It offers PIPELINING unless told not to, and records
what arrived in each read (`chunks`), so a test can see commands sent together.
"""

from __future__ import annotations

from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.sink import Received, Sink, _Handler


class _LmtpHandler(_Handler):
    sink: LmtpSink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.sink.held("DATA")
        replies, delivered = [], []
        for rcpt in envelope.rcpt_tos:
            scripted = self.sink.scripted("DELIVER", rcpt)
            replies.append(scripted or f"250 2.0.0 <{rcpt}> delivered")
            if not scripted:
                delivered.append(rcpt)
        if delivered:
            self.sink.record(
                Received(
                    str(envelope.mail_from),
                    delivered,
                    envelope.original_content or b"",
                    list(envelope.mail_options),
                )
            )
        drop = self.sink.dropping
        if drop is not None:
            self.sink.dropping = None
            for line in replies[:drop]:
                server._writer.write(line.encode() + b"\r\n")
            await server._writer.drain()
            server.transport.abort()  # gone before the other replies
            return ""
        return "\r\n".join(replies)  # pushed at once, one reply per recipient


class _Lmtp(LMTP):  # type: ignore[misc]
    def __init__(self, sink: LmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        self.sink.chunks.append(data)
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        refused = self.sink.scripted("DATA-COMMAND", None)
        if refused and self.envelope.rcpt_tos:
            await self.push(refused)
            return
        await super().smtp_DATA(arg)


class _LmtpController(Controller):  # type: ignore[misc]
    def __init__(self, sink: LmtpSink, port: int) -> None:
        super().__init__(
            _LmtpHandler(sink), hostname="127.0.0.1", port=port, server_hostname="lmtp.test",
            ready_timeout=10,
        )  # fmt: skip
        self.sink = sink

    def factory(self) -> Any:
        self.sink.count_connection()
        return _Lmtp(self.sink, self.handler, **self.SMTP_kwargs)


class LmtpSink(Sink):
    def __init__(self, port: int | None = None, *, pipelining: bool = True) -> None:
        super().__init__(port)
        self.pipelining = pipelining
        self.chunks: list[bytes] = []
        self.dropping: int | None = None

    def drop_after(self, replies: int) -> None:
        """At the next message, close the connection after this many per-recipient replies."""
        self.dropping = replies

    def start(self) -> LmtpSink:
        self._controller = _LmtpController(self, self.port)  # type: ignore[assignment]
        self._controller.start()  # type: ignore[union-attr]
        self.connections = 0  # the controller's own readiness probe is not a client
        self.chunks.clear()
        return self

    def __enter__(self) -> LmtpSink:
        return self.start()
