"""The session's fast path (receive/session_fast.py) answers exactly as aiosmtpd's task does.

Two real `mailgate run`, one with `[smtp] fast_path = false` (every command through
aiosmtpd, the behaviour before the fast path), are sent the same dialogues over raw sockets:
one command at a time, pipelined, split mid-line, errors in every state, bodies too big, with
lines too long, with smuggling attempts, a terminator split across writes, the error limit.
Every reply must be byte-identical (queue ids aside), and the messages both queued must be.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

TIMEOUT = 10.0
ALICE = "alice@po1.net1.example.test"
QUEUED = re.compile(rb"queued as \S+")
# A step: bytes sent in one write, and how many replies they earn.
Step = tuple[bytes, int]


def body(text: bytes) -> bytes:
    return b"From: s@example.org\r\nSubject: fast\r\n\r\n" + text


SCRIPTS: dict[str, list[Step]] = {
    "one at a time": [
        (b"EHLO client.test\r\n", 1),
        (b"MAIL FROM:<s@example.org>\r\n", 1),
        (f"RCPT TO:<{ALICE}>\r\n".encode(), 1),
        (b"DATA\r\n", 1),
        (body(b"hello\r\n.\r\n"), 1),
        (b"NOOP\r\n", 1),
        (b"RSET\r\n", 1),
        (b"QUIT\r\n", 1),
    ],
    "pipelined": [
        (b"EHLO client.test\r\n", 1),
        (
            b"MAIL FROM:<s@example.org> BODY=8BITMIME SIZE=300\r\n"
            + f"RCPT TO:<{ALICE}>\r\nDATA\r\n".encode(),
            3,
        ),
        (body(b"one\r\n.\r\n") + f"MAIL FROM:<>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 4),
        (body(b"two\r\n.\r\n") + b"RSET\r\nEHLO again.test\r\nNOOP\r\n", 4),
        (
            f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode()
            + body(b"three\r\n.\r\nQUIT\r\n"),
            5,
        ),
    ],
    "split lines": [
        (b"EHLO client.test\r\n", 1),
        (b"MAIL FR", 0),
        (b"OM:<s@example.org>\r\nRCPT TO:<" + ALICE.encode(), 1),
        (b">\r\n", 1),
        (b"DATA\r\n", 1),
        (body(b"split\r\n"), 0),
        (b".", 0),
        (b"\r", 0),
        (b"\nNOOP\r\n", 2),
    ],
    "errors before and between": [
        (b"MAIL FROM:<s@example.org>\r\n", 1),  # no EHLO yet: 503
        (b"NOOP\r\n", 1),
        (b"DATA\r\n", 1),
        (b"HELO client.test\r\n", 1),
        (b"MAIL FROM:<s@example.org> SIZE=10\r\n", 1),  # HELO: no parameters
        (b"MAIL FROM:<s@example.org>\r\n", 1),
        (b"RSET\r\n", 1),
        (b"EHLO client.test\r\n", 1),
        (f"RCPT TO:<{ALICE}>\r\n".encode(), 1),  # no MAIL: 503
        (b"MAIL FROM:<s@example.org> SIZE=99999999\r\n", 1),  # 552
        (b"MAIL FROM:<s@example.org> SIZE=12x\r\n", 1),
        (b"MAIL FROM:<s@example.org> BODY=BAD\r\n", 1),
        (b"MAIL FROM:<s@example.org> BODY\r\n", 1),
        (b"MAIL FROM:<s@example.org> FOO=1\r\n", 1),
        (b"MAIL FROM:<s@example.org> SMTPUTF8=1\r\n", 1),
        (b"MAIL FROM:s@example.org\r\n", 1),  # no angle brackets: the general parser
        (b"MAIL FROM:<s@@example.org>\r\n", 1),
        (b"MAIL TO:<s@example.org>\r\n", 1),
        (b"MAIL\r\n", 1),
        (b"mail from:<S@Example.ORG>\r\n", 1),  # lower-case verb, accepted
        (b"MAIL FROM:<t@example.org>\r\n", 1),  # nested: 503
        (b"RCPT TO:<nobody@po1.net1.example.test>\r\n", 1),
        (b"RCPT TO:<" + ALICE.encode() + b"> NOTIFY=NEVER\r\n", 1),
        (b"RCPT TO:<xn---bad@example.test>\r\n", 1),
        (b"RCPT TO:\r\n", 1),
        (b"RCPT\r\n", 1),
        (b"DATA now\r\n", 1),
        (b"DATA\r\n", 1),  # no accepted RCPT: 503
        (b"RSET now\r\n", 1),
        (b"NOOP what ever\r\n", 1),
        (b"\r\n", 1),
        (b"   \r\n", 1),
        (b"rset\r\n", 1),
        (b"MAIL FROM:<s@example.org> " + b"X" * 600 + b"\r\n", 1),  # command too long
        (b"QUIT\r\n", 1),
    ],
    "bodies refused": [
        (b"EHLO client.test\r\n", 1),
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 3),
        (body(b"x" * 70 + b"\r\n") * 400 + b".\r\n", 1),  # over max_message_size: 552
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 3),
        (body(b"y" * 3000 + b"\r\n.\r\n"), 1),  # a line over max_line_length: 500
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 3),
        (b"Subject: no header end\r\n" + b"h" * 10 + b"\r\n.\r\n", 1),
        (b"QUIT\r\n", 1),
    ],
    "smuggling": [
        (b"EHLO client.test\r\n", 1),
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 3),
        # Bare LF and bare CR around a dot never end a message: one reply (554, bare LF
        # refused), and the "MAIL" inside it is never a command.
        (body(b"a\n.\nMAIL FROM:<evil@example.org>\r\nb\r.\rc\n.\r\nd\r\n..dot\r\n.\r\n"), 1),
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode(), 3),
        (body(b"..dot\r\n.\r\n"), 1),  # dot-stuffing undone
        (b"QUIT\r\n", 1),
    ],
    "chunking": [
        (b"EHLO client.test\r\n", 1),
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\n".encode(), 2),
        (b"BDAT 45\r\n" + body(b"chunk\r\n"), 1),  # 45 octets, not the last
        (f"RCPT TO:<{ALICE}>\r\nDATA\r\nNOOP\r\n".encode(), 3),  # after BDAT: 503, 503
        (b"BDAT 6 LAST\r\nlast\r\n", 1),
        (f"MAIL FROM:<s@example.org>\r\nRCPT TO:<{ALICE}>\r\nBDAT 0 LAST\r\n".encode(), 3),
        (b"RSET\r\n", 1),
    ],
    "error limit": [
        (b"EHLO client.test\r\n", 1),
        # The 40th error reply closes the session with 421, after the replies before it.
        (
            b"RCPT TO:<nobody@example.test>\r\n" * 38
            + b"MAIL FROM:<s@example.org>\r\n"
            + b"DATA\r\nRCPT TO:<nobody@po1.net1.example.test>\r\nNOOP\r\n",
            42,
        ),
    ],
}


def _config(fast: bool) -> str:
    return DEFAULT_CONFIG + (
        f"\n[smtp]\nfast_path = {'true' if fast else 'false'}\n"
        'max_message_size = "20KiB"\nmax_line_length = 2000\nmax_errors = 40\n'
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mailgate, Mailgate]]:
    started: list[Mailgate] = []
    try:
        for fast in (True, False):
            mg = Mailgate(Path(tmp_path_factory.mktemp("fast" if fast else "slow")),
                          config=_config(fast))  # fmt: skip
            mg.add_mailbox("MS:NET1/PO1/ALICE")
            mg.start()
            started.append(mg)
        yield started[0], started[1]
    finally:
        for mg in started:
            mg.close()


class Dialogue:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def replies(self, n: int) -> list[bytes]:
        got = []
        while len(got) < n:
            reply = self._reply()
            if reply is None:
                break
            got.append(QUEUED.sub(b"queued as ID", reply))
        return got

    def _reply(self) -> bytes | None:
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buffer += chunk
                continue
            line = self.buffer[start:end]
            start = end + 2
            if line[3:4] != b"-":
                reply, self.buffer = self.buffer[:start], self.buffer[start:]
                return reply

    def close(self) -> None:
        self.sock.close()


QUEUED_BY_PORT: dict[int, int] = {}  # "queued as" replies each instance gave


def run(mg: Mailgate, script: list[Step]) -> list[list[bytes]]:
    talk = Dialogue(mg.port)
    try:
        transcript = [talk.replies(1)]  # the greeting
        for data, n in script:
            talk.sock.sendall(data)
            transcript.append(talk.replies(n))
    finally:
        talk.close()
    queued = sum(r.startswith(b"250 2.0.0 Ok: queued") for step in transcript for r in step)
    QUEUED_BY_PORT[mg.port] = QUEUED_BY_PORT.get(mg.port, 0) + queued
    return transcript


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_fast_path_replies_as_aiosmtpd_does(pair: tuple[Mailgate, Mailgate], name: str) -> None:
    fast, slow = pair
    script = SCRIPTS[name]
    expected = run(slow, script)
    got = run(fast, script)
    assert [len(r) for r in expected] == [1] + [n for _, n in script], expected
    assert got == expected


def _content(path: Path) -> bytes:
    """A delivered message, its queue id and time in Received: made alike."""
    data = re.sub(rb" id [0-9A-F]{10,}", b" id ID", path.read_bytes())
    return re.sub(rb"; \w{3}, \d\d \w{3} \d{4} [\d:]+ [+-]\d{4}", b"; DATE", data)


def test_fast_path_queues_the_same_messages(pair: tuple[Mailgate, Mailgate]) -> None:
    """Both delivered the same messages, byte for byte past the trace headers (the scripts
    ran on both above: this test runs them again if it runs alone)."""
    if not QUEUED_BY_PORT:
        for script in SCRIPTS.values():
            for mg in pair:
                run(mg, script)
    found = []
    for mg in pair:
        count = QUEUED_BY_PORT[mg.port]
        paths = wait_for(
            lambda mg=mg, count=count: len(p := mg.delivered("NET1", "PO1", "ALICE")) >= count
            and p,
            TIMEOUT, what=f"{count} deliveries",
        )  # fmt: skip
        found.append(sorted(_content(p) for p in paths))
    assert QUEUED_BY_PORT[pair[0].port] == QUEUED_BY_PORT[pair[1].port] >= 5
    assert found[0] == found[1]
    assert not [b for b in found[0] if b"evil@example.org" in b], "the smuggling was refused"
    assert [b for b in found[0] if b.endswith(b"\n.dot\n")], "dots unstuffed"
