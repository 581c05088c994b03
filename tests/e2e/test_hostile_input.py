"""Hostile SMTP input against a real `mailgate run`: exact replies, nothing stored, still serving.

Every test talks to the service over loopback, with raw sockets where the exact bytes
matter and smtplib elsewhere. After each attack the test proves that the service still
delivers a normal message, and where it matters that nothing else reached the queue
(the `messages` table holds exactly the queue ids the server answered 250 for) or a
mailbox. Waits are polls with deadlines; every socket has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.process import DEFAULT_CONFIG, Mailgate, header, running, wait_for

TIMEOUT = 10.0
DOMAIN = "po1.net1.example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]+)$")


# --- helpers --------------------------------------------------------------------------------------
class Raw:
    """A raw SMTP client: the caller chooses every byte on the wire."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.rfile = self.sock.makefile("rb")
        self.greeting = self.reply()
        assert self.greeting.startswith("220 "), self.greeting

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One (possibly multi-line) reply, lines joined with '\\n', CRLF stripped."""
        lines: list[str] = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                raise ConnectionError(f"server closed the connection after {lines!r}")
            lines.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.reply()

    def ehlo(self) -> str:
        reply = self.cmd(b"EHLO client.test")
        assert reply.startswith("250-"), reply
        return reply

    def data(self, payload: bytes) -> str:
        """DATA, then `payload` exactly as given (it must carry its own terminator)."""
        go = self.cmd(b"DATA")
        assert go.startswith("354 "), go
        self.send(payload)
        return self.reply()

    def envelope(self, sender: bytes, *recipients: bytes, params: bytes = b"") -> None:
        reply = self.cmd(b"MAIL FROM:<" + sender + b">" + params)
        assert reply == "250 2.1.0 Ok", reply
        for rcpt in recipients:
            reply = self.cmd(b"RCPT TO:<" + rcpt + b">")
            assert reply == "250 2.1.5 Ok", (rcpt, reply)


def queue_id(reply: str) -> str:
    match = QUEUED.match(reply)
    assert match, reply
    return match.group(1)


def queued_ids(mg: Mailgate) -> set[str]:
    """Every message id in the queue store (done ones stay for `keep_done`), read-only."""
    path = mg.data_dir / "queue" / "queue.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


def message_count(mg: Mailgate) -> int:
    path = mg.data_dir / "queue" / "queue.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)
    finally:
        conn.close()


def mailbox(address: str) -> tuple[str, str, str]:
    local, _, domain = address.partition("@")
    po, net = domain.split(".")[:2]
    return net.upper(), po.upper(), local.upper()


def files(mg: Mailgate, address: str) -> list[Path]:
    return mg.delivered(*mailbox(address))


def still_serves(mg: Mailgate, to: str = BOB) -> str:
    """Send a normal message with smtplib, wait for its delivery; return its queue id."""
    assert mg.proc is not None and mg.proc.poll() is None, mg.stderr()
    before = set(files(mg, to))
    marker = f"still-serving-{time.monotonic_ns()}"
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=TIMEOUT) as client:
        client.ehlo("check.test")
        assert client.mail("check@example.org")[0] == 250
        assert client.rcpt(to)[0] == 250
        code, text = client.data(f"Subject: {marker}\r\n\r\n{marker}\r\n".encode())
    assert code == 250, text
    qid = queue_id(f"250 {text.decode()}")
    new = wait_for(
        lambda: [p for p in files(mg, to) if p not in before], TIMEOUT, what="a normal delivery"
    )
    assert len(new) == 1 and marker.encode() in new[0].read_bytes()
    assert not mg.events(3004), "no session ever hit an unexpected exception"
    return qid


def replies(mg: Mailgate, event_id: int, prefix: str) -> list[str]:
    """The `reply` fields of events `event_id` that start with `prefix`."""
    found = (e["fields"].get("reply", "") for e in mg.events(event_id))
    return [r for r in found if r.startswith(prefix)]


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@contextlib.contextmanager
def limited(tmp_path: Path, smtp: str, *mailboxes: str) -> Iterator[Mailgate]:
    """A mailgate with an extra [smtp] section and the given mailboxes, started."""
    with running(tmp_path, config=DEFAULT_CONFIG + "\n[smtp]\n" + smtp + "\n") as mg:
        for ms in mailboxes:
            mg.add_mailbox(ms)
        mg.start()
        yield mg


# --- 1. extensions and enhanced status codes ------------------------------------------------------
def test_ehlo_extensions_and_enhanced_codes_on_ordinary_replies(mailgate: Mailgate) -> None:
    with smtplib.SMTP("127.0.0.1", mailgate.port, timeout=TIMEOUT) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        for ext in ("size", "8bitmime", "pipelining", "smtputf8", "enhancedstatuscodes"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == str(10 * 1024 * 1024)

    with Raw(mailgate.port) as s:
        assert s.cmd(b"RCPT TO:<" + ALICE.encode() + b">").startswith("503 5.5.1 ")
        lines = s.ehlo().split("\n")
        keywords = {line[4:] for line in lines[1:]}
        assert {"SIZE 10485760", "8BITMIME", "PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= (
            keywords
        )
        assert s.cmd(b"RCPT TO:<" + ALICE.encode() + b">") == "503 5.5.1 Error: need MAIL command"
        assert s.cmd(b"DATA").startswith("503 5.5.1 ")
        assert s.cmd(b"NOOP") == "250 2.0.0 OK"
        # PIPELINING really works: one write, three replies in order.
        s.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n")
        assert s.reply() == "250 2.1.0 Ok"
        assert s.reply() == "250 2.1.5 Ok"
        assert s.reply().startswith("354 ")
        s.send(b"Subject: codes\r\n\r\nenhanced\r\n.\r\n")
        qid = queue_id(s.reply())
        assert s.cmd(b"MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
        assert s.cmd(b"MAIL FROM:<a@example.org>").startswith("503 5.5.1 ")
        assert s.cmd(b"RSET") == "250 2.0.0 OK"
        assert s.cmd(b"\xff\xfe junk").startswith("500 5.5.2 ")
        assert s.cmd(b"QUIT").startswith("221 2.0.0 ")

    delivered = wait_for(lambda: files(mailgate, ALICE), TIMEOUT, what="delivery to alice")
    assert len(delivered) == 1 and b"enhanced" in delivered[0].read_bytes()
    other = still_serves(mailgate)
    assert queued_ids(mailgate) == {qid, other}


# --- 2. unknown mailbox, relay denied -------------------------------------------------------------
def test_unknown_mailbox_550_and_foreign_domain_554_with_events(mailgate: Mailgate) -> None:
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<sender@example.org>") == "250 2.1.0 Ok"
        nobody = s.cmd(b"RCPT TO:<nobody@" + DOMAIN.encode() + b">")
        assert nobody.startswith("550 5.1.1 <nobody@po1.net1.example.test>: "), nobody
        other_po = s.cmd(b"RCPT TO:<alice@po9.net1.example.test>")
        assert other_po.startswith("550 5.1.1 "), other_po
        relay = s.cmd(b"RCPT TO:<someone@elsewhere.org>")
        assert relay == "554 5.7.1 <someone@elsewhere.org>: Relay access denied"
        assert s.cmd(b"DATA").startswith("503 5.5.1 "), "no recipient was accepted"

    wait_for(lambda: len(mailgate.events(2371)) == 2, TIMEOUT, what="two InvalidRecipient")
    invalid = mailgate.wait_events(2371)
    assert [e["fields"]["recipient"] for e in invalid] == [
        f"nobody@{DOMAIN}",
        "alice@po9.net1.example.test",
    ]
    assert all(e["fields"]["reply"].startswith("550 5.1.1 ") for e in invalid)
    denied = wait_for(lambda: mailgate.events(3002), TIMEOUT, what="RelayDenied")
    assert [e["fields"]["recipient"] for e in denied] == ["someone@elsewhere.org"]
    assert denied[0]["fields"]["reply"].startswith("554 5.7.1 ")
    qid = still_serves(mailgate)
    assert queued_ids(mailgate) == {qid}


# --- 3. overlong commands, addresses and lines: test_kb_q173344_long_recipient.py -----------------


# --- 4. bare LF / bare CR smuggling, NUL ----------------------------------------------------------
SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<" + ALICE.encode() + b">\r\n"
    b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
)
HOSTILE_BODIES = {
    "bare LF dot": b"Subject: x\r\n\r\nbody\n.\n" + SMUGGLED,
    "bare LF dot, short": b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
    "bare CR dot": b"Subject: x\r\n\r\nbody\r.\r" + SMUGGLED,
    "LF dot CRLF": b"Subject: x\r\n\r\nbody\n.\r\n" + SMUGGLED,
    "CRLF dot LF": b"Subject: x\r\n\r\nbody\r\n.\n" + SMUGGLED,
    "CR dot CRLF": b"Subject: x\r\n\r\nbody\r.\r\n" + SMUGGLED,
    "bare CR in header": b"Subject: x\rInjected: yes\r\n\r\nbody\r\n.\r\n",
    "NUL in body": b"Subject: x\r\n\r\nnul\x00byte\r\n.\r\n",
}


def test_bare_newlines_and_nul_refused_and_nothing_smuggled(mailgate: Mailgate) -> None:
    with Raw(mailgate.port) as s:
        s.ehlo()
        for name, payload in HOSTILE_BODIES.items():
            s.envelope(b"sender@example.org", BOB.encode())
            reply = s.data(payload)
            assert reply.startswith("554 5.6.0 "), (name, reply)
            # Had the server ended DATA early, replies to the smuggled commands would be next.
            assert s.cmd(b"NOOP") == "250 2.0.0 OK", name
        # Pipelined in one write, as a smuggler would send it.
        s.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<" + BOB.encode() + b">\r\nDATA\r\n")
        assert [s.reply(), s.reply()] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
        assert s.reply().startswith("354 ")
        s.send(HOSTILE_BODIES["bare LF dot"] + b"NOOP\r\n")
        assert s.reply().startswith("554 5.6.0 ")
        assert s.reply() == "250 2.0.0 OK"

    # A bare CR in EHLO must not become a header line in the trace header either.
    with Raw(mailgate.port) as s:
        assert s.cmd(b"EHLO evil\rInjected: yes").startswith("250")
        s.envelope(b"sender@example.org", BOB.encode())
        helo_qid = queue_id(s.data(b"Subject: helo\r\n\r\nhelo\r\n.\r\n"))
    delivered = wait_for(lambda: files(mailgate, BOB), TIMEOUT, what="delivery")
    assert len(delivered) == 1
    text = delivered[0].read_bytes()
    assert b"\r" not in text and b"\nInjected:" not in text
    assert header(delivered[0], "Injected") is None
    received = header(delivered[0], "Received")
    assert received is not None and received.startswith("from evil?Injected:?yes "), received

    expected = len(HOSTILE_BODIES) + 1
    wait_for(lambda: len(replies(mailgate, 3003, "554 5.6.0 ")) == expected, TIMEOUT, what="3003s")
    qid = still_serves(mailgate, ALICE)
    assert len(files(mailgate, ALICE)) == 1, "no smuggled message reached alice"
    assert len(files(mailgate, BOB)) == 1
    assert queued_ids(mailgate) == {helo_qid, qid}


# --- 5. 8-bit headers and SMTPUTF8 ----------------------------------------------------------------
def test_8bit_headers_need_smtputf8_and_are_delivered_byte_exact(mailgate: Mailgate) -> None:
    message = "Subject: héllo wörld ✉\r\nFrom: Zoë <zoe@example.org>\r\n\r\nbody ünïcode\r\n"
    raw = message.encode("utf-8")
    with Raw(mailgate.port) as s:
        s.ehlo()
        s.envelope(b"a@b", ALICE.encode())
        reply = s.data(raw + b".\r\n")
        assert reply.startswith("554 5.6.7 "), reply
        # 8-bit in the body only is fine without SMTPUTF8 (8BITMIME).
        s.envelope(b"a@b", BOB.encode(), params=b" BODY=8BITMIME")
        body_qid = queue_id(s.data(b"Subject: plain\r\n\r\n" + "ünïcode".encode() + b"\r\n.\r\n"))
        s.envelope(b"a@b", ALICE.encode(), params=b" SMTPUTF8")
        qid = queue_id(s.data(raw + b".\r\n"))

    delivered = wait_for(lambda: files(mailgate, ALICE), TIMEOUT, what="the SMTPUTF8 message")
    assert len(delivered) == 1
    stored = delivered[0].read_bytes()
    assert stored.endswith(raw.replace(b"\r\n", b"\n")), stored  # Maildir uses LF
    assert "héllo wörld ✉".encode() in stored
    assert header(delivered[0], "Return-Path") == "<a@b>"
    wait_for(lambda: files(mailgate, BOB), TIMEOUT, what="the 8-bit body message")
    other = still_serves(mailgate)
    assert queued_ids(mailgate) == {body_qid, qid, other}


# --- 6. path traversal and unsafe names -----------------------------------------------------------
UNSAFE_RECIPIENTS = {
    b"../../etc@po1.net1.example.test": "550 5.1.1 ",
    b"alice/..@po1.net1.example.test": "550 5.1.1 ",
    b"..@po1.net1.example.test": "550 5.1.1 ",
    b'"../x"@po1.net1.example.test': "550 5.1.1 ",
    b'"alice/../bob"@po1.net1.example.test': "550 5.1.1 ",
    b"%2e%2e@po1.net1.example.test": "550 5.1.1 ",
    b"a\\b@po1.net1.example.test": "550 5.1.1 ",
    b"al\x00ice@po1.net1.example.test": "501 5.1.3 ",
    b"alice\x00@po1.net1.example.test": "501 5.1.3 ",
    b"alice@po1.net1\x00.example.test": "501 5.1.3 ",
    b"x@../po1.net1.example.test": "553 5.1.3 ",
    b"alice@..net1.example.test": "553 5.1.3 ",
    b"alice@po1..example.test": "553 5.1.3 ",
    b"alice@po1.net1.example.test/../x": "553 5.1.3 ",
    b"abcdefghijk@po1.net1.example.test": "550 5.1.1 ",  # 11 characters
    b"alice@abcdefghijk.net1.example.test": "550 5.1.1 ",
    b"alice@po1.abcdefghijk.example.test": "550 5.1.1 ",
    b"b\x1bob@po1.net1.example.test": "501 5.1.3 ",
}


def test_unsafe_recipient_names_refused_and_nothing_created(mailgate: Mailgate) -> None:
    wait_for(lambda: mailgate.events(5000), TIMEOUT, what="threads started")
    root = mailgate.root
    po_root = mailgate.data_dir / "postoffice"
    po_dirs = {p for p in tree(po_root) if p.is_dir()}
    outside = {p for p in tree(root) if po_root not in p.parents and p != po_root}
    siblings = set(root.parent.iterdir())

    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<sender@example.org>") == "250 2.1.0 Ok"
        for rcpt, expected in UNSAFE_RECIPIENTS.items():
            reply = s.cmd(b"RCPT TO:<" + rcpt + b">")
            assert reply.startswith(expected), (rcpt, reply)
        assert s.cmd(b"DATA").startswith("503 5.5.1 "), "no unsafe recipient was accepted"
        assert s.cmd(b"NOOP") == "250 2.0.0 OK"

    qid = still_serves(mailgate)
    assert {p for p in tree(po_root) if p.is_dir()} == po_dirs, "no new postoffice directories"
    new_outside = {p for p in tree(root) if po_root not in p.parents and p != po_root} - outside
    # The queue and logs only grow existing files (SQLite's -wal/-shm and rotated logs come
    # and go on their own schedule).
    new_outside = {p for p in new_outside if not p.name.endswith(("-wal", "-shm", ".jsonl.1"))}
    assert new_outside == set(), new_outside
    assert set(root.parent.iterdir()) == siblings
    assert [p.name for p in po_root.iterdir()] == ["NET1"]

    # Hostile names reach the event log only escaped: every line is still one JSON record.
    # The receive worker's events reach the master's log on their own schedule (channel.py
    # paces them), not necessarily before the other message's delivery: wait for them.
    def records() -> list[dict[str, Any]]:  # every written line (the last may be half written)
        lines = (mailgate.data_dir / "log" / "events.jsonl").read_text().split("\n")[:-1]
        return [json.loads(line) for line in lines]

    wait_for(
        lambda: any(r["id"] == 2371 and "\x00" in r["fields"]["recipient"] for r in records()),
        TIMEOUT,
        what="event 2371 naming the recipient with a NUL",
    )
    assert queued_ids(mailgate) == {qid}


def test_unicode_lookalikes_do_not_alias_mailboxes(mailgate: Mailgate) -> None:
    """Regression: 'al\u0131ce'.upper() == 'ALICE' and re.IGNORECASE folds '\u017f' to 's'."""
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<a@b> SMTPUTF8") == "250 2.1.0 Ok"
        assert s.cmd(b"RCPT TO:<" + BOB.encode() + b">") == "250 2.1.5 Ok"
        dotless = s.cmd("RCPT TO:<al\u0131ce@po1.net1.example.test>".encode())
        long_s = s.cmd("RCPT TO:<bob@po1.net1.example.te\u017ft>".encode())
        queue_id(s.data(b"Subject: lookalike\r\n\r\nlookalike\r\n.\r\n"))
    wait_for(lambda: files(mailgate, BOB), TIMEOUT, what="delivery to bob")
    still_serves(mailgate, ALICE)  # ensures earlier deliveries (if any) are done too
    observed = (dotless[:1], long_s[:1], len(files(mailgate, BOB)), len(files(mailgate, ALICE)))
    assert observed == ("5", "5", 1, 1), (dotless, long_s, observed)


# --- 7. size limit --------------------------------------------------------------------------------
def test_message_over_size_limit_552(tmp_path: Path) -> None:
    with limited(
        tmp_path, 'max_message_size = "64k"', "MS:NET1/PO1/ALICE", "MS:NET1/PO1/BOB"
    ) as mg:
        with Raw(mg.port) as s:
            assert "250-SIZE 64000" in s.ehlo().split("\n")
            reply = s.cmd(b"MAIL FROM:<a@b> SIZE=100000")
            assert reply.startswith("552 5.3.4 "), reply
            s.envelope(b"a@b", ALICE.encode())
            line = b"x" * 78 + b"\r\n"
            big = b"Subject: big\r\n\r\n" + line * (100_000 // len(line))
            reply = s.data(big + b".\r\n")
            assert reply.startswith("552 5.3.4 "), reply
            s.envelope(b"a@b", ALICE.encode(), params=b" SIZE=1000")  # session goes on
            assert s.cmd(b"RSET") == "250 2.0.0 OK"
        wait_for(lambda: len(replies(mg, 3003, "552 5.3.4 ")) == 2, TIMEOUT, what="2 x 552")
        qid = still_serves(mg, ALICE)
        assert len(files(mg, ALICE)) == 1
        assert queued_ids(mg) == {qid}


# --- 8. disconnect mid-DATA -----------------------------------------------------------------------
def test_disconnect_mid_data_leaves_nothing(mailgate: Mailgate) -> None:
    for how in ("close", "reset", "almost-dot"):
        with Raw(mailgate.port) as s:
            s.ehlo()
            s.envelope(b"sender@example.org", ALICE.encode())
            assert s.cmd(b"DATA").startswith("354 ")
            if how == "almost-dot":
                s.send(b"Subject: half\r\n\r\nall but the last byte\r\n.\r")
            else:
                s.send(b"Subject: half\r\n\r\nhalf a mess")
            if how == "reset":  # RST instead of FIN
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with Raw(mailgate.port) as probe:  # the next client is served at once
            assert probe.cmd(b"NOOP") == "250 2.0.0 OK"

    assert message_count(mailgate) == 0
    qid = still_serves(mailgate, ALICE)
    assert len(files(mailgate, ALICE)) == 1
    assert queued_ids(mailgate) == {qid}
    path = mailgate.data_dir / "queue" / "queue.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        bodies = conn.execute("SELECT COUNT(*) FROM bodies WHERE message_id != ?", (qid,))
        assert bodies.fetchone() == (0,)
    finally:
        conn.close()


# --- 9. null sender -------------------------------------------------------------------------------
def test_null_sender_accepted_and_delivered(mailgate: Mailgate) -> None:
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<>") == "250 2.1.0 Ok"
        assert s.cmd(b"RCPT TO:<" + ALICE.encode() + b">") == "250 2.1.5 Ok"
        qid = queue_id(s.data(b"Subject: bounce\r\n\r\nnull sender\r\n.\r\n"))
    delivered = wait_for(lambda: files(mailgate, ALICE), TIMEOUT, what="the bounce")
    assert len(delivered) == 1
    assert header(delivered[0], "Return-Path") == "<>"
    assert b"null sender" in delivered[0].read_bytes()
    other = still_serves(mailgate)
    assert queued_ids(mailgate) == {qid, other}


# --- 10. too many recipients ----------------------------------------------------------------------
def test_too_many_recipients_452(tmp_path: Path) -> None:
    boxes = ["MS:NET1/PO1/ALICE", "MS:NET1/PO1/BOB", "MS:NET1/PO1/CAROL", "MS:NET1/PO1/DAVE"]
    with limited(tmp_path, "max_recipients = 3", *boxes) as mg:
        rcpts = [f"{name}@{DOMAIN}".encode() for name in ("alice", "bob", "carol", "dave")]
        with Raw(mg.port) as s:
            s.ehlo()
            s.envelope(b"a@b", *rcpts[:3])
            assert s.cmd(b"RCPT TO:<" + rcpts[3] + b">") == "452 4.5.3 Error: too many recipients"
            assert s.cmd(b"RCPT TO:<" + rcpts[0] + b">").startswith("452 4.5.3 ")
            qid = queue_id(s.data(b"Subject: three\r\n\r\nthree of four\r\n.\r\n"))
        three = [r.decode() for r in rcpts[:3]]
        wait_for(lambda: all(files(mg, r) for r in three), TIMEOUT, what="three deliveries")
        other = still_serves(mg, "dave@" + DOMAIN)  # the limit is per message
        dave = files(mg, "dave@" + DOMAIN)
        assert len(dave) == 1 and b"three of four" not in dave[0].read_bytes()
        for rcpt in rcpts[:3]:
            assert len(files(mg, rcpt.decode())) == 1
        assert queued_ids(mg) == {qid, other}


# --- 11. duplicate recipients ---------------------------------------------------------------------
def test_duplicate_rcpt_delivers_one_copy(mailgate: Mailgate) -> None:
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd(b"MAIL FROM:<sender@example.org>") == "250 2.1.0 Ok"
        for spelling in (ALICE, ALICE, ALICE.upper(), "Alice@PO1.net1.Example.Test", ALICE):
            assert s.cmd(f"RCPT TO:<{spelling}>".encode()) == "250 2.1.5 Ok", spelling
        assert s.cmd(b"RCPT TO:<" + BOB.encode() + b">") == "250 2.1.5 Ok"
        qid = queue_id(s.data(b"Subject: dup\r\n\r\nonce\r\n.\r\n"))
    wait_for(lambda: files(mailgate, BOB), TIMEOUT, what="delivery to bob")
    wait_for(  # every recipient of the message reached a final state
        lambda: [e for e in mailgate.events(4003) if e["fields"]["queue_id"] == qid],
        TIMEOUT,
        what="MessageDone",
    )
    assert len(files(mailgate, ALICE)) == 1
    assert len(files(mailgate, BOB)) == 1
    path = mailgate.data_dir / "queue" / "queue.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        rows = conn.execute("SELECT address FROM recipients WHERE message_id = ?", (qid,))
        assert sorted(r[0].lower() for r in rows) == [ALICE, BOB]
    finally:
        conn.close()
    other = still_serves(mailgate, ALICE)
    assert len(files(mailgate, ALICE)) == 2
    assert queued_ids(mailgate) == {qid, other}


def test_non_ascii_addresses_need_smtputf8(mailgate: Mailgate) -> None:
    with Raw(mailgate.port) as s:
        s.ehlo()
        assert s.cmd("MAIL FROM:<j\u00f6rg@example.org>".encode()).startswith("553 5.6.7")
        assert s.cmd(b"MAIL FROM:<a@b>") == "250 2.1.0 Ok"
        assert s.cmd("RCPT TO:<j\u00f6rg@po1.net1.example.test>".encode()).startswith("553 5.6.7")
    still_serves(mailgate, ALICE)
