"""Long lines are real mail: lines over RFC 5321's 1,000 octets are accepted up to
`[smtp] max_line_length`, delivered byte-identical into postoffice mailboxes, and broken the
way Postfix's smtp_line_length_limit does (CRLF SPACE) before they reach an SMTP peer.

11 of ~1,100 real messages (ordinary bounces from large providers among them) had been
refused `500 5.5.2 Line too long`.
"""

from __future__ import annotations

import itertools
import smtplib
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate, running, wait_for
from tests.support.sink import Sink

TIMEOUT = 10.0
ALICE = "alice@po1.net1.example.test"
LONG_HEADER = b"X-Long-Header: " + b"h" * 4_985  # a 5,000-octet header line


def message(subject: str, line: bytes) -> bytes:
    return (
        b"Subject: " + subject.encode() + b"\r\n" + LONG_HEADER + b"\r\n\r\n"
        b"before\r\n" + line + b"\r\n." + line[:3000] + b"\r\nafter\r\n"
    )  # the second long line starts with a dot: dot-stuffing must survive too


def lines(n: int) -> bytes:
    """A line of `n` octets that is not one octet repeated (a misplaced cut would show)."""
    pattern = bytes(range(33, 127)) + "é€".encode()
    return (pattern * (n // len(pattern) + 1))[:n]


MESSAGES = {"5000": message("5,000-octet line", lines(5_000)),
            "100000": message("100,000-octet line", lines(100_000))}  # fmt: skip


def send(mg: Mailgate, to: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        refused = client.sendmail("sender@example.org", [to], body, ["SMTPUTF8"])
        assert refused == {}


def test_long_lines_are_accepted_and_delivered_byte_identical(mailgate: Mailgate) -> None:
    for body in MESSAGES.values():
        send(mailgate, ALICE, body)
    paths = wait_for(
        lambda: len(found := mailgate.delivered("NET1", "PO1", "ALICE")) == 2 and found,
        TIMEOUT, what="two deliveries",
    )  # fmt: skip
    delivered = sorted(p.read_bytes() for p in paths)
    for body in MESSAGES.values():
        as_stored = body.replace(b"\r\n", b"\n")  # a Maildir's line ends
        assert any(d.endswith(as_stored) for d in delivered), "the message arrived intact"


def test_long_lines_are_broken_for_smtp_peers(tmp_path: Path) -> None:
    with Sink() as sink, running(tmp_path) as mg:
        mg.start("--smarthost", f"127.0.0.1:{sink.port}")
        for body in MESSAGES.values():
            send(mg, "friend@elsewhere.example", body)
        received = sink.wait_messages(2)
        assert not mg.events(2401), "nothing bounced"
    by_size = sorted(received, key=lambda m: len(m.content))
    for body, got in zip(MESSAGES.values(), by_size, strict=True):
        got_lines = got.content.split(b"\r\n")
        assert max(len(line) + 2 for line in got_lines) <= 1000, "no line over 1,000 octets"
        # Postfix's shape: 998 octets, then CRLF SPACE and at most 997 more, and so on.
        # Joining the continuations back gives the message as it was sent.
        original = body.split(b"\r\n")
        rejoined = got.content.replace(b"\r\n ", b"").split(b"\r\n")
        assert rejoined[-len(original) :] == original
        # Each piece followed by a continuation is full: 998 octets, less a UTF-8 sequence
        # that a break never splits.
        full = [len(a) for a, b in itertools.pairwise(got_lines) if b.startswith(b" ")]
        assert full and all(995 <= n <= 998 for n in full), full
        got.content.decode("utf-8")  # no break fell inside a UTF-8 sequence
    assert mg.events(3020), "event LinesBroken says what was changed"


def test_line_over_max_line_length_refused(tmp_path: Path) -> None:
    config = DEFAULT_CONFIG + "\n[smtp]\nmax_line_length = 2000\n"
    with running(tmp_path, config=config) as mg:
        mg.add_mailbox("MS:NET1/PO1/ALICE")
        mg.start()
        send(mg, ALICE, b"Subject: at the limit\r\n\r\n" + b"a" * 2000 + b"\r\n")
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=TIMEOUT) as client:
            client.ehlo("client.test")
            client.mail("sender@example.org")
            client.rcpt(ALICE)
            code, text = client.data(b"Subject: over\r\n\r\n" + b"b" * 2001 + b"\r\n")
            assert (code, text) == (
                500,
                b"5.5.2 Line too long: a message line is longer than 2000 octets",
            )
            assert client.noop()[0] == 250, "the session goes on"
        [path] = wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), TIMEOUT, what="delivery")
        assert b"\n" + b"a" * 2000 + b"\n" in path.read_bytes()
        refused = mg.wait_events(3003)
        assert refused[0]["fields"]["reply"].startswith("500 5.5.2 Line too long")
