"""Q173344: a recipient of 256 characters or more got stuck in the queue.

mailgate owes: RFC 5321 length limits at receive (local part 64, domain 255, path 256
octets; command and text lines), answered with exact replies; and no length
assumption after that: an address at the limit is queued, relayed, reported on and
bounced to like any other. The receive-side test moved here from
test_hostile_input.py, assertions unchanged.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from tests.e2e.test_hostile_input import (
    ALICE,
    BOB,
    DOMAIN,
    TIMEOUT,
    Raw,
    files,
    queue_id,
    queued_ids,
    replies,
    still_serves,
)
from tests.support.kb import recipient_states, report_blocks, send
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

LONG_DOMAIN = ".".join(["a" * 60, "b" * 60, "c" * 60, "dddddd"])  # 189 octets
LONGEST = f"{'r' * 64}@{LONG_DOMAIN}"  # <...> is 256 octets: the longest path allowed
LONG_SENDER = f"{'s' * 64}@{LONG_DOMAIN.replace('a', 'e')}"


def test_overlong_command_address_and_data_line(mailgate: Mailgate) -> None:
    long_domain = b".".join([b"a" * 60, b"b" * 60, b"c" * 60, b"dddddd"])  # 189 octets
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"NOOP " + b"x" * 508) == "500 5.5.2 Command line too long"  # 515 octets
        assert s.cmd(b"NOOP " + b"x" * 600) == "500 5.5.2 Command line too long"
        assert s.cmd(b"X" * 70_000) == "500 5.5.2 Command line too long"  # past the read buffer
        assert s.cmd(b"NOOP") == "250 2.0.0 OK"

        # Addresses, RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets.
        local65 = s.cmd(b"MAIL FROM:<" + b"a" * 65 + b"@example.org>")
        assert local65.startswith("501 5.1.7 "), local65
        assert s.cmd(b"MAIL FROM:<sender@example.org>") == "250 2.1.0 Ok"
        reply = s.cmd(b"RCPT TO:<" + b"a" * 65 + b"@" + DOMAIN.encode() + b">")
        assert reply.startswith("501 5.1.3 "), reply
        assert "local part" in reply
        reply = s.cmd(b"RCPT TO:<a@" + b"d" * 256 + b">")
        assert reply.startswith("501 5.1.3 "), reply
        reply = s.cmd(b"RCPT TO:<" + b"a" * 64 + b"@" + long_domain + b"x>")  # path 257
        assert reply.startswith("501 5.1.3 "), reply
        assert "path longer than 256" in reply
        # At the limits the syntax passes, and policy (relay denied) decides instead.
        reply = s.cmd(b"RCPT TO:<" + b"a" * 64 + b"@" + long_domain + b">")  # path 256
        assert reply.startswith("554 5.7.1 "), reply

        # DATA lines: [smtp] max_line_length (1 MiB by default, without the CRLF) is the
        # limit; longer is refused after the dot (tests/e2e/test_long_lines.py: shorter ones).
        assert s.cmd(b"RCPT TO:<" + ALICE.encode() + b">") == "250 2.1.5 Ok"
        over = b"y" * (1024 * 1024 + 1)
        reply = s.data(b"Subject: long\r\n\r\n" + over + b"\r\nmore\r\n.\r\n")
        assert reply.startswith("500 5.5.2 "), reply
        assert s.cmd(b"NOOP") == "250 2.0.0 OK"
        s.envelope(b"sender@example.org", BOB.encode())
        at_limit = b"z" * 998
        qid = queue_id(s.data(b"Subject: limit\r\n\r\n" + at_limit + b"\r\n.\r\n"))

    delivered = wait_for(lambda: files(mailgate, BOB), TIMEOUT, what="the 1000-octet line")
    assert b"\n" + at_limit + b"\n" in delivered[0].read_bytes()
    wait_for(lambda: replies(mailgate, 3003, "500 5.5.2 Line too long"), TIMEOUT, what="3003")
    other = still_serves(mailgate, ALICE)
    assert len(files(mailgate, ALICE)) == 1, "the overlong message reached nobody"
    assert queued_ids(mailgate) == {qid, other}


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


def test_longest_addresses_are_relayed_reported_and_bounced_to(tmp_path: Path, sink: Sink) -> None:
    assert len(f"<{LONGEST}>") == 256 and len(f"<{LONG_SENDER}>") == 256
    refused = f"{'x' * 64}@{LONG_DOMAIN.replace('a', 'f')}"
    sink.fail("RCPT", f"550 5.1.1 <{refused}>: no such user", address=refused)
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + "\n[smarthost]\nthreads = 1\n")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        queue_id = send(mg, LONG_SENDER, [LONGEST, refused], b"Subject: long\r\n\r\nlong\r\n")
        messages = sink.wait_messages(2, timeout=TIMEOUT)
        delivered, report = sorted(messages, key=lambda m: m.sender == "<>")
        assert delivered.sender == LONG_SENDER and delivered.recipients == [LONGEST]
        assert report.sender == "<>" and report.recipients == [LONG_SENDER], "the bounce went out"
        parsed = email.message_from_bytes(report.content, policy=policy.default)
        assert [str(b["Final-Recipient"]) for b in report_blocks(parsed)] == [f"rfc822; {refused}"]
        sent = {e["fields"]["recipient"] for e in mg.wait_events(2448, count=2)}
        assert sent == {LONGEST, LONG_SENDER}
        assert recipient_states(mg, queue_id) == {LONGEST: "delivered", refused: "bounced"}
    finally:
        mg.close()
