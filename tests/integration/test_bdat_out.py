"""The SMTP and LMTP connectors send BDAT (RFC 3030) to a server that offers CHUNKING, against a
real server that speaks it (tests/support/bdat_sink.py): the message as it is, no
dot-stuffing; with PIPELINING the whole transaction in one write; big messages in 1 MiB
chunks; replies per recipient as for DATA; `chunking = false` sends DATA."""

from __future__ import annotations

import smtplib

import pytest

from mailgate.connectors.chunked import CHUNK, chunks
from mailgate.connectors.lmtp import LmtpConnector, LmtpTarget
from mailgate.connectors.smtp import SmarthostConnector, SmarthostTarget
from mailgate.model import Disposition
from mailgate.observe.events import EventLog
from tests.e2e.test_dovecot_lmtp_quota import ALICE, BOB, TIGHT, inbox
from tests.integration.test_lmtp_dovecot import dovecot  # noqa: F401 - a fixture
from tests.integration.test_smarthost import claim
from tests.support.bdat_sink import BdatSink
from tests.support.dovecot import Dovecot

D = Disposition
# A line that starts with a dot, one that is only a dot, and no final CRLF: DATA would
# stuff the first two and add the third; BDAT sends the octets as they are.
BODY = b"Subject: chunks\r\n\r\n.leading dot\r\n.\r\nlast line"


def smarthost(sink: BdatSink, **kw: object) -> SmarthostConnector:
    target = SmarthostTarget(host="127.0.0.1", port=sink.port, helo="mx.test", **kw)  # type: ignore[arg-type]
    return SmarthostConnector(target, EventLog())


def lmtp(sink: BdatSink) -> LmtpConnector:
    return LmtpConnector(LmtpTarget(host="127.0.0.1", port=sink.port, lhlo="mx.test"), EventLog())


def verbs(sink: BdatSink) -> list[str]:
    return [c.split()[0].decode().upper() for c in sink.commands if c[:1].isalpha()]


def test_chunks_are_counted_octets_the_last_marked_last() -> None:
    assert chunks(b"") == [b"BDAT 0 LAST\r\n"]
    assert chunks(b"ab\r\n") == [b"BDAT 4 LAST\r\n" + b"ab\r\n"]
    assert chunks(b"ab") == [b"BDAT 4 LAST\r\nab\r\n"], "a final CRLF is added, as DATA does"
    assert chunks(b"abcd\r\n", size=3) == [b"BDAT 3\r\nabc", b"BDAT 3 LAST\r\nd\r\n"]
    assert chunks(b"abcd\r\n", size=6) == [b"BDAT 6 LAST\r\nabcd\r\n"]
    assert [len(c) for c in chunks(b"x" * (2 * CHUNK) + b"\r\n")] == [
        CHUNK + len(b"BDAT 1048576\r\n"), CHUNK + 14, 2 + len(b"BDAT 2 LAST\r\n")
    ]  # fmt: skip


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "in-turn"])
def test_a_message_goes_as_one_bdat_last_as_it_is(pipelining: bool) -> None:
    with BdatSink(pipelining=pipelining) as sink:
        session = smarthost(sink).open()
        results = session.deliver([claim("a@x.org", 1), claim("b@x.org", 2)], BODY)
        session.close()
        [message] = sink.wait_messages(1)
    assert [r.disposition for r in results] == [D.DELIVERED, D.DELIVERED]
    assert message.content == BODY + b"\r\n", "no dot-stuffing; the final CRLF added"
    assert message.chunks == [len(BODY) + 2]
    assert message.recipients == ["a@x.org", "b@x.org"]
    assert "DATA" not in verbs(sink)
    assert verbs(sink)[:4] == ["EHLO", "MAIL", "RCPT", "RCPT"]
    # EHLO, the transaction and QUIT: with PIPELINING the transaction is one write.
    assert sink.reads[0] == (3 if pipelining else 6), sink.reads


def test_a_big_message_goes_in_chunks_of_a_mebibyte_and_arrives_byte_identical() -> None:
    body = b"Subject: big\r\n\r\n" + b"".join(b"%07d.line\r\n" % n for n in range(180_000))
    with BdatSink() as sink:
        session = smarthost(sink).open()
        [result] = session.deliver([claim()], body)
        session.close()
        [message] = sink.wait_messages(1)
    assert result.disposition is D.DELIVERED, result.reply
    assert message.content == body
    assert len(body) > 2 * CHUNK
    assert message.chunks == [CHUNK, CHUNK, len(body) - 2 * CHUNK]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "in-turn"])
def test_a_refused_chunk_is_the_reply_of_every_accepted_recipient(pipelining: bool) -> None:
    body = b"Subject: big\r\n\r\n" + b"y" * 990 + b"\r\n"
    body *= 3 * CHUNK // len(body)
    with BdatSink(pipelining=pipelining) as sink:
        sink.refuse_rcpt["gone@x.org"] = "550 5.1.1 no such user"
        sink.refuse_chunk[2] = "452 4.3.1 Insufficient system storage"
        session = smarthost(sink).open()
        results = session.deliver([claim("a@x.org", 1), claim("gone@x.org", 2)], body)
        # The connection is still good for the next message (RSET after the failure).
        [after] = session.deliver([claim("c@x.org", 3)], BODY)
        session.close()
        [message] = sink.wait_messages(1)
    assert [(r.disposition, r.reply) for r in results] == [
        (D.DEFERRED, "452 4.3.1 Insufficient system storage"),
        (D.FAILED, "550 5.1.1 no such user"),
    ]
    assert after.disposition is D.DELIVERED and message.recipients == ["c@x.org"]
    bdats = [c for c in sink.commands if c.startswith(b"BDAT")]
    if not pipelining:
        assert len(bdats) == 3, "no chunk after the refused one, then the next message's"
    assert b"RSET\r\n" in sink.commands


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "in-turn"])
def test_no_recipient_accepted_sends_no_message(pipelining: bool) -> None:
    with BdatSink(pipelining=pipelining) as sink:
        sink.refuse_rcpt["gone@x.org"] = "550 5.1.1 no such user"
        session = smarthost(sink).open()
        [result] = session.deliver([claim("gone@x.org")], BODY)
        [after] = session.deliver([claim("a@x.org", 2)], BODY)
        session.close()
        [message] = sink.wait_messages(1)
    assert (result.disposition, result.reply) == (D.FAILED, "550 5.1.1 no such user")
    assert after.disposition is D.DELIVERED and message.recipients == ["a@x.org"]
    if not pipelining:
        assert sum(c.startswith(b"BDAT") for c in sink.commands) == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "in-turn"])
def test_lmtp_gives_one_reply_per_accepted_recipient_after_the_last_chunk(
    pipelining: bool,
) -> None:
    with BdatSink(lmtp=True, pipelining=pipelining) as sink:
        sink.refuse_rcpt["gone@x.org"] = "550 5.1.1 no such user"
        sink.lmtp_replies["full@x.org"] = "552 5.2.2 <full@x.org> Quota exceeded"
        sink.lmtp_replies["busy@x.org"] = "452 4.2.2 <busy@x.org> Mailbox is full"
        session = lmtp(sink).open()
        addresses = ["a@x.org", "gone@x.org", "full@x.org", "busy@x.org", "b@x.org"]
        results = session.deliver([claim(a, n) for n, a in enumerate(addresses)], BODY)
        [after] = session.deliver([claim("c@x.org", 9)], BODY)
        session.close()
        sink.wait_messages(2)
    assert [r.disposition for r in results] == [
        D.DELIVERED, D.FAILED, D.FAILED, D.DEFERRED, D.DELIVERED
    ]  # fmt: skip
    assert results[2].reply == "552 5.2.2 <full@x.org> Quota exceeded"
    assert after.disposition is D.DELIVERED
    assert "DATA" not in verbs(sink) and "LHLO" in verbs(sink)


def test_chunking_false_sends_data() -> None:
    with BdatSink() as sink:
        session = smarthost(sink, chunking=False).open()
        [result] = session.deliver([claim()], BODY)
        session.close()
        [message] = sink.wait_messages(1)
    assert result.disposition is D.DELIVERED
    assert "DATA" in verbs(sink) and "BDAT" not in verbs(sink)
    assert message.content == BODY + b"\r\n" and message.chunks == []


def test_long_lines_are_broken_before_bdat_too() -> None:
    body = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n"
    with BdatSink() as sink:
        session = smarthost(sink).open()
        [result] = session.deliver([claim()], body)
        session.close()
        [message] = sink.wait_messages(1)
    assert result.disposition is D.DELIVERED
    assert max(len(line) for line in message.content.split(b"\r\n")) == 998
    assert message.content.replace(b"\r\n ", b"") == body


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_dovecot_lmtp_takes_bdat_with_a_reply_per_recipient_and_stores_it_as_sent(
    dovecot: Dovecot,  # noqa: F811
    chunking: bool,
) -> None:
    lhlo = smtplib.LMTP("127.0.0.1", dovecot.lmtp_port, timeout=10)
    assert lhlo.ehlo("mx.test")[0] == 250 and lhlo.has_extn("chunking"), "Dovecot offers it"
    lhlo.quit()
    body = (
        f"From: <sender@example.org>\r\nTo: <{ALICE}>\r\nSubject: dots\r\n"
        "Message-ID: <dots@example.org>\r\n\r\n.\r\n..two\r\n"
    ).encode() + (b"y" * 500 + b"\r\n") * 2  # over TIGHT's 1K quota: refused after the message
    target = LmtpTarget(host="127.0.0.1", port=dovecot.lmtp_port, lhlo="mx.test", chunking=chunking)
    session = LmtpConnector(target, EventLog()).open()
    try:
        claims = [
            claim(a, n, sender="sender@example.org") for n, a in enumerate([ALICE, TIGHT, BOB])
        ]
        results = session.deliver(claims, body)
    finally:
        session.close()
    assert [r.disposition for r in results] == [D.DELIVERED, D.FAILED, D.DELIVERED], results
    assert results[1].reply.startswith("552 5.2.2"), results[1]
    assert inbox(dovecot, ALICE) == inbox(dovecot, BOB) == [body]
