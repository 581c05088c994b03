"""Round trips to the smarthost (issue 14.5): with PIPELINING offered, one message to several
recipients is one transaction whose MAIL, every RCPT and DATA leave in one write, then the
body; without it, each command waits for its reply. Counted at a real aiosmtpd sink as the
client's writes that each began after a reply (its reads)."""

from __future__ import annotations

from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from mailgate.model import Disposition
from tests.integration.test_smarthost import BODY, claim, connector
from tests.support.sink import Sink, _Handler

RECIPIENTS = ["a@elsewhere.org", "b@elsewhere.org", "c@elsewhere.org"]


class _Counting(SMTP):  # type: ignore[misc]
    def __init__(self, sink: CountingSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        self.sink.chunks.append(data)
        super().data_received(data)


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, sink: CountingSink) -> None:
        super().__init__(
            _Handler(sink), hostname="127.0.0.1", port=sink.port,
            server_hostname="sink.test", ready_timeout=10,
        )  # fmt: skip
        self.sink = sink

    def factory(self) -> Any:
        self.sink.count_connection()
        return _Counting(self.sink, self.handler, **self.SMTP_kwargs)


class CountingSink(Sink):
    """A sink that records what arrived in each read, offering PIPELINING or not."""

    def __init__(self, *, pipelining: bool) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.chunks: list[bytes] = []

    def start(self) -> CountingSink:
        self._controller = _Controller(self)  # type: ignore[assignment]
        self._controller.start()  # type: ignore[union-attr]
        self.connections = 0
        self.chunks = []  # not the controller's readiness probe
        return self

    def transaction(self) -> list[bytes]:
        """The reads from MAIL to the body's end."""
        first = next(i for i, c in enumerate(self.chunks) if c.startswith(b"MAIL FROM:"))
        last = next(i for i, c in enumerate(self.chunks) if c.endswith(b"\r\n.\r\n"))
        return self.chunks[first : last + 1]


def _send(sink: CountingSink) -> None:
    session = connector(sink).open()
    try:
        claims = [claim(address, rid) for rid, address in enumerate(RECIPIENTS, 1)]
        results = session.deliver(claims, BODY)
    finally:
        session.close()
    assert [r.disposition for r in results] == [Disposition.DELIVERED] * 3
    [message] = sink.messages
    assert message.recipients == RECIPIENTS, "one transaction for every recipient"


def test_pipelined_transaction_takes_two_round_trips() -> None:
    with CountingSink(pipelining=True) as sink:
        _send(sink)
        reads = sink.transaction()
    assert len(reads) == 2, reads
    commands = reads[0].split(b"\r\n")[:-1]
    assert [c.split(b":")[0] for c in commands] == [b"MAIL FROM", *[b"RCPT TO"] * 3, b"DATA"]


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    with CountingSink(pipelining=False) as sink:
        _send(sink)
        reads = sink.transaction()
    assert len(reads) == 6, reads  # MAIL, three RCPT, DATA, then the body
