"""Domains in MAIL and RCPT must be valid: LDH labels, A-labels that decode as IDNA, U-labels
under SMTPUTF8, IPv4 and IPv6 address literals. `MAIL FROM:<a@xn--->` was accepted.

A real `mailgate run` relaying to a sink: invalid domains get 501 with an enhanced code and
nothing is queued; valid IDNs and literals are accepted and reach the sink as they were sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_hostile_input import Raw, queued_ids
from tests.support.process import Mailgate
from tests.support.sink import Sink

SENDER_REFUSED = re.compile(r"^501 5\.1\.7 Bad sender address syntax: .*domain")
RECIPIENT_REFUSED = re.compile(r"^501 5\.1\.3 Bad recipient address syntax: .*domain")
BAD = [
    "xn---", "XN---", "xn--a", "xn--abc-", "-lead.example", "trail-.example", "foo_bar.example",
    "a" * 64 + ".example", "[300.1.1.1]", "[IPv6:zz::1]", "[tag:anything]",
]  # fmt: skip


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[Mailgate, Sink]]:
    with Sink() as sink:
        mg = Mailgate(tmp_path)
        mg.start("--smarthost", f"127.0.0.1:{sink.port}")
        try:
            yield mg, sink
        finally:
            mg.close()


def test_invalid_domain_syntax_refused(relay: tuple[Mailgate, Sink]) -> None:
    mg, _ = relay
    with Raw(mg.port) as s:
        s.ehlo()
        for domain in BAD:
            reply = s.cmd(f"MAIL FROM:<a@{domain}>".encode())
            assert SENDER_REFUSED.match(reply), (domain, reply)
    with Raw(mg.port) as s:  # a fresh session: each may collect only so many errors
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
        for domain in BAD:
            reply = s.cmd(f"RCPT TO:<b@{domain}>".encode())
            assert RECIPIENT_REFUSED.match(reply), (domain, reply)
        assert s.cmd(b"DATA").startswith("503 5.5.1 "), "no recipient was accepted"
        # Under SMTPUTF8 a U-label must still be a valid IDN.
        assert s.cmd(b"RSET") == "250 2.0.0 OK"
        assert s.cmd(b"MAIL FROM:<a@example.org> SMTPUTF8") == "250 2.1.0 Ok"
        reply = s.cmd("RCPT TO:<b@bü_cher.example>".encode())
        assert RECIPIENT_REFUSED.match(reply), reply
    assert queued_ids(mg) == set()


def test_valid_idns_and_address_literals_still_relay(relay: tuple[Mailgate, Sink]) -> None:
    mg, sink = relay
    ascii_rcpts = [
        "b@xn--bcher-kva.example", "c@XN--BCHER-KVA.EXAMPLE", "d@[192.0.2.1]",
        "e@[IPv6:2001:db8::1]", "f@sub-domain.example1.org",
    ]  # fmt: skip
    utf8_rcpts = ["g@bücher.example", "h@пример.рф"]
    with Raw(mg.port) as s:
        s.ehlo()
        s.envelope(b"a@xn--bcher-kva.example", *(r.encode() for r in ascii_rcpts))
        assert s.data(b"Subject: idn\r\n\r\nascii\r\n.\r\n").startswith("250 2.0.0 ")
        reply = s.cmd("MAIL FROM:<a@bücher.example> SMTPUTF8".encode())
        assert reply == "250 2.1.0 Ok", reply
        for rcpt in utf8_rcpts:
            assert s.cmd(f"RCPT TO:<{rcpt}>".encode()) == "250 2.1.5 Ok", rcpt
        assert s.data(b"Subject: utf8\r\n\r\nutf8\r\n.\r\n").startswith("250 2.0.0 ")
    messages = sink.wait_messages(2)
    by_sender = {m.sender: sorted(m.recipients) for m in messages}
    assert by_sender == {
        "a@xn--bcher-kva.example": sorted(ascii_rcpts),
        "a@bücher.example": sorted(utf8_rcpts),
    }
