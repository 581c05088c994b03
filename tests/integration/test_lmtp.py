"""The LMTP connector against a real LMTP server (aiosmtpd's, tests/support/lmtp_sink.py)
that injects failures: per-recipient replies after DATA, DATA refused, a server lost
between replies, pipelining, reuse with RSET, limits, cancel."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mailgate.connectors.limits import Limits
from mailgate.connectors.lmtp import LmtpConnector, LmtpTarget
from mailgate.errors import TemporaryFailure
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Disposition
from mailgate.observe.events import EventLog
from tests.integration.test_smarthost import claim, deliver_in_thread
from tests.support.lmtp_sink import LmtpSink
from tests.support.process import wait_for

BODY = b"Subject: hi\r\n\r\nhello\r\n"
D = Disposition


def recording() -> tuple[EventLog, list[tuple[int, dict[str, Any]]]]:
    events = EventLog()
    seen: list[tuple[int, dict[str, Any]]] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event, fields, _ = record.mailgate_event  # type: ignore[attr-defined]
            seen.append((event.id, dict(fields)))

    events.add_sink(Seen())
    return events, seen


def connector(
    sink: LmtpSink, events: EventLog | None = None, limits: Limits | None = None, **kw: Any
) -> LmtpConnector:
    target = LmtpTarget(host="127.0.0.1", port=sink.port, lhlo="mx.test", **kw)
    return LmtpConnector(target, events or EventLog(), limits=limits)


def test_each_recipient_gets_its_own_reply_after_data() -> None:
    with LmtpSink() as sink:
        sink.fail("RCPT", "550 5.1.1 <gone@x.org> User doesn't exist", address="gone@x.org")
        sink.fail("DELIVER", "452 4.2.2 <busy@x.org> Mailbox is full", address="busy@x.org")
        sink.fail("DELIVER", "552 5.2.2 <full@x.org> Quota exceeded", address="full@x.org")
        session = connector(sink).open()
        addresses = ["a@x.org", "gone@x.org", "busy@x.org", "full@x.org", "b@x.org"]
        results = session.deliver([claim(a, n) for n, a in enumerate(addresses)], BODY)
        session.close()
    assert [r.disposition for r in results] == [
        D.DELIVERED,
        D.FAILED,
        D.DEFERRED,
        D.FAILED,
        D.DELIVERED,
    ]
    assert [r.reply for r in results] == [
        "250 2.0.0 <a@x.org> delivered",
        "550 5.1.1 <gone@x.org> User doesn't exist",
        "452 4.2.2 <busy@x.org> Mailbox is full",
        "552 5.2.2 <full@x.org> Quota exceeded",
        "250 2.0.0 <b@x.org> delivered",
    ]
    assert all(r.remote_mta == "127.0.0.1" for r in results)
    [message] = sink.messages
    assert message.recipients == ["a@x.org", "b@x.org"] and message.content == BODY


@pytest.mark.parametrize("pipelining", [True, False])
def test_data_refused_applies_to_every_accepted_recipient(pipelining: bool) -> None:
    with LmtpSink(pipelining=pipelining) as sink:
        sink.fail("RCPT", "550 5.1.1 unknown", address="gone@x.org")
        sink.fail("DATA-COMMAND", "554 5.3.0 not now, not ever", times=1)
        session = connector(sink).open()
        results = session.deliver(
            [claim("a@x.org", 1), claim("gone@x.org", 2), claim("b@x.org", 3)], BODY
        )
        assert [r.reply for r in results] == [
            "554 5.3.0 not now, not ever", "550 5.1.1 unknown", "554 5.3.0 not now, not ever",
        ]  # fmt: skip
        # The connection was reset and stays usable for the next message.
        [after] = session.deliver([claim("a@x.org", 4, queue_id="Q2")], BODY)
        session.close()
    assert after.disposition is D.DELIVERED and sink.connections == 1


def test_a_server_lost_between_its_replies_defers_only_the_unanswered() -> None:
    events, seen = recording()
    with LmtpSink() as sink:
        sink.fail("RCPT", "550 5.1.1 unknown", address="gone@x.org")
        sink.drop_after(1)
        session = connector(sink, events).open()
        addresses = ["a@x.org", "gone@x.org", "b@x.org", "c@x.org"]
        results = session.deliver([claim(a, n) for n, a in enumerate(addresses)], BODY)
        session.close()
    assert [r.disposition for r in results] == [D.DELIVERED, D.FAILED, D.DEFERRED, D.DEFERRED]
    assert results[2].reply.startswith("451 4.4.1 LMTP server 127.0.0.1:")
    assert [event for event, _ in seen] == [2480], "the server is reported unreachable"


def test_commands_are_pipelined_when_offered_and_not_otherwise() -> None:
    for pipelining in (True, False):
        with LmtpSink(pipelining=pipelining) as sink:
            session = connector(sink).open()
            session.deliver([claim("a@x.org", 1), claim("b@x.org", 2)], BODY)
            session.close()
        together = [c for c in sink.chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c]
        if pipelining:
            assert together and together[0].endswith(b"DATA\r\n"), sink.chunks
        else:
            assert together == [], sink.chunks
        assert len(sink.messages) == 1


def test_one_connection_reset_between_messages_and_replaced_when_dropped_idle() -> None:
    sink = LmtpSink().start()
    session = connector(sink).open()
    try:
        for n in range(3):
            [result] = session.deliver([claim(rid=n, queue_id=f"Q{n}")], BODY)
            assert result.disposition is D.DELIVERED
        assert sink.connections == 1
        assert sum(c.count(b"RSET\r\n") for c in sink.chunks) == 2, "RSET before each reuse"
        sink.stop()  # the server goes away while our connection idles...
        sink.start()  # ...and comes back: the stale connection is replaced, silently
        [result] = session.deliver([claim(rid=9, queue_id="Q9")], BODY)
        assert result.disposition is D.DELIVERED
        assert len(sink.messages) == 4 and sink.connections == 1
    finally:
        session.close()
        sink.stop()


def test_long_lines_are_broken_for_the_server() -> None:
    body = b"Subject: long\r\n\r\n" + b"x" * 3000 + b"\r\n"
    with LmtpSink() as sink:
        session = connector(sink).open()
        [result] = session.deliver([claim()], body)
        session.close()
    assert result.disposition is D.DELIVERED
    [message] = sink.messages
    assert max(len(line) for line in message.content.split(b"\r\n")) == 998
    assert message.content.replace(b"\r\n ", b"") == body


def test_an_unreachable_server_is_marked_down_and_not_hammered() -> None:
    events, seen = recording()
    sink = LmtpSink()  # not started: connection refused
    c = connector(sink, events, down_for=60.0)
    session = c.open()
    with pytest.raises(TemporaryFailure, match=r"^451 4\.4\.1 LMTP server 127\.0\.0\.1:"):
        session.deliver([claim()], BODY)
    sink.start()
    try:
        with pytest.raises(TemporaryFailure, match="is down"):
            session.deliver([claim()], BODY)
        assert sink.connections == 0
        assert c.clear_down("mailgate ctl wake") is True
        [result] = session.deliver([claim()], BODY)
        assert result.disposition is D.DELIVERED
    finally:
        session.close()
        sink.stop()
    assert [event for event, _ in seen] == [2480, 2482, 2481]


def test_cancel_breaks_the_connection_before_the_message_is_handed_over() -> None:
    with LmtpSink() as sink:
        sink.hang("MAIL")
        session = connector(sink).open()
        thread, out = deliver_in_thread(session)
        wait_for(lambda: sink.hanging == 1, 10, what="the hung MAIL")
        assert session.cancel("Q1") == "its LMTP connection was broken"
        thread.join(10)
        [failure] = out
        assert isinstance(failure, TemporaryFailure) and failure.reply == CANCELLED_REPLY
        sink.release()
        [result] = session.deliver([claim(queue_id="Q2")], BODY)
        session.close()
    assert result.disposition is D.DELIVERED and len(sink.messages) == 1


def test_messages_per_connection_then_a_new_connection() -> None:
    with LmtpSink() as sink:
        session = connector(sink, limits=Limits(messages_per_connection=2)).open()
        for n in range(5):
            [result] = session.deliver([claim(rid=n, queue_id=f"Q{n}")], BODY)
            assert result.disposition is D.DELIVERED
        session.close()
        assert sink.connections == 3
        assert sum(c.upper().count(b"QUIT\r\n") for c in sink.chunks) == 3


def test_threads_under_a_connection_limit_hand_the_connection_over() -> None:
    with LmtpSink() as sink:
        c = connector(sink, limits=Limits(connections=1, wait=0))
        first, second = c.open(), c.open()
        for n, session in enumerate([first, second, first, second]):
            [result] = session.deliver([claim(rid=n, queue_id=f"Q{n}")], BODY)
            assert result.disposition is D.DELIVERED
        assert sink.connections == 1, "the idle connection went to the thread that needed it"
        first.close()
        second.close()


def test_a_rate_limit_defers_what_cannot_wait() -> None:
    events, seen = recording()
    with LmtpSink() as sink:
        session = connector(sink, events, limits=Limits(rate=0.001, wait=0)).open()
        [result] = session.deliver([claim(queue_id="Q1")], BODY)
        assert result.disposition is D.DELIVERED
        with pytest.raises(TemporaryFailure, match=r"^451 4\.4\.5 127\.0\.0\.1:\d+: limit of"):
            session.deliver([claim(queue_id="Q2")], BODY)
        session.close()
    assert [event for event, _ in seen] == [2488]
    assert len(sink.messages) == 1
