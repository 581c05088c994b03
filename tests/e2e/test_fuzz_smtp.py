"""Property-based fuzzing of the SMTP dialogue against one running service (bounded).

Random command sequences with random bytes in every argument. Properties: the server
keeps answering; every reply is a well-formed SMTP reply; nothing is written outside
the data directory; every message that got a 250 after DATA is in the queue (and later
in its mailbox). Hypothesis shrinks any failure to a small dialogue.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.process import Mailgate

REPLY = re.compile(rb"^[2-5]\d\d([ -].*)?$")
ALICE = b"alice@po1.net1.example.test"

VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY",
         b"EXPN", b"HELP", b"AUTH", b"STARTTLS", b"BDAT", b"XYZZY", b"", b"QUIT"]  # fmt: skip
arguments = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"<>", b"<" + ALICE + b">", b"<x@elsewhere.org>", b"<a%b@c>", b"x" * 600,
                     b"<" + b"a" * 70 + b"@x>", b" SIZE=99999999999", b"<\x00@x>", b"client"]),
)  # fmt: skip
commands = st.lists(st.tuples(st.sampled_from(VERBS), arguments), min_size=1, max_size=12)
bodies = st.binary(max_size=400)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailgate]:
    root = tmp_path_factory.mktemp("fuzz")
    mg = Mailgate(root)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    before = {p for p in root.parent.iterdir()}
    try:
        yield mg
    finally:
        mg.close()
    assert {p for p in root.parent.iterdir()} == before, "files appeared outside the data dir"


def read_reply(stream: socket.SocketIO | object) -> list[bytes]:
    lines = []
    while True:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            return lines
        lines.append(line.rstrip(b"\r\n"))
        if len(line) >= 4 and line[3:4] != b"-":
            return lines


def queued(mg: Mailgate, queue_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(mg.data_dir / "queue" / "queue.db")) as db:
        return db.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is not None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=commands, body=bodies)
def test_random_dialogues(
    fuzz_target: Mailgate, script: list[tuple[bytes, bytes]], body: bytes
) -> None:
    mg = fuzz_target
    accepted: list[str] = []
    with socket.create_connection(("127.0.0.1", mg.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        assert read_reply(stream)[0].startswith(b"220")
        for verb, arg in script:
            line = verb + (b" " + arg if verb and arg else arg if not verb else b"")
            try:
                sock.sendall(line + b"\r\n")
                reply = read_reply(stream)
            except OSError:
                break  # the server may close a session (QUIT, 421): that is an answer too
            if not reply:
                break
            assert all(REPLY.match(r) for r in reply), (line, reply)
            if verb == b"DATA" and reply[-1].startswith(b"354"):
                sock.sendall(body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
                final = read_reply(stream)
                assert final and all(REPLY.match(r) for r in final), final
                match = re.search(rb"queued as ([0-9A-F]+)", final[-1])
                if final[-1].startswith(b"250") and match:
                    accepted.append(match.group(1).decode())
    for queue_id in accepted:
        assert queued(mg, queue_id), f"{queue_id} got 250 but is not in the queue"
    # The server still serves a normal client after whatever happened.
    with socket.create_connection(("127.0.0.1", mg.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        assert read_reply(stream)[0].startswith(b"220")
        sock.sendall(b"NOOP\r\n")
        assert read_reply(stream)[0].startswith(b"250")


def test_accepted_fuzz_messages_are_delivered(fuzz_target: Mailgate) -> None:
    """Runs after the property: whatever it got accepted reaches the mailbox."""
    with contextlib.closing(sqlite3.connect(fuzz_target.data_dir / "queue" / "queue.db")) as db:
        total = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    from tests.support.process import wait_for

    wait_for(
        lambda: len(fuzz_target.delivered("NET1", "PO1", "ALICE")) >= total, 30,
        what="every accepted fuzz message delivered",
    )  # fmt: skip
    assert Path(fuzz_target.data_dir).exists()
