"""The private Dovecot's LMTP as a delivery target: per-recipient refusals over quota.

This proves the harness a later LMTP connector will be tested against (tests/support/
dovecot.py), talking LMTP with Python's smtplib.LMTP: a recipient already over quota is
refused at RCPT (lmtp_rcpt_check_quota), one whose quota the message would exceed is
refused in its own reply after DATA, and the others are delivered, each exactly once.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator

import pytest

from tests.support.dovecot import Dovecot, live_members, reachable_dir
from tests.support.process import free_port as real_free_port

ALICE, BOB, FULL, TIGHT = (f"{u}@dovecot.test" for u in ("alice", "bob", "full", "tight"))


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with reachable_dir() as shared:
        dv = Dovecot(shared / "dovecot")
        dv.add_user(ALICE)
        dv.add_user(BOB)
        full = dv.add_user(FULL, quota="1K")
        dv.add_user(TIGHT, quota="1K")
        # FULL is over its quota before anything is delivered: a 2,000-byte message.
        (full / "cur" / "1.M1.test,S=2000:2,S").write_bytes(b"Subject: big\n\n" + b"x" * 1986)
        dv.own(full)
        with dv:
            yield dv


def message(subject: str, size: int = 0) -> bytes:
    return (
        (
            f"From: <sender@example.org>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.org>\r\n\r\nbody\r\n"
        ).encode()
        + b"y" * size
        + b"\r\n"
    )


def inbox(dv: Dovecot, address: str) -> list[bytes]:
    """The messages in `address`'s INBOX as sent: without the trace Dovecot prepends."""
    return [untraced(raw) for raw in fetch_all(dv, address)]


def untraced(raw: bytes) -> bytes:
    """`raw` less the header lines LMTP puts above the message (Return-Path, Received ...)."""
    head, sep, rest = raw.partition(b"\r\nFrom: <sender@example.org>\r\n")
    assert sep, raw[:300]
    for line in head.split(b"\r\n"):
        assert line.startswith(TRACE), f"not a trace line: {line!r}"
    return sep[2:] + rest


TRACE = (b"Return-Path: <sender@example.org>", b"Delivered-To: ", b"Received: ", b"\t", b" ")


def fetch_all(dv: Dovecot, address: str) -> list[bytes]:
    conn = dv.imap(address)
    try:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK"
        if int(data[0] or 0) == 0:
            return []
        typ, fetched = conn.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [item[1] for item in fetched if isinstance(item, tuple)]
    finally:
        conn.logout()


def test_one_recipient_over_quota_is_refused_at_rcpt_the_others_delivered(
    dovecot: Dovecot,
) -> None:
    lmtp = dovecot.lmtp()
    try:
        assert lmtp.ehlo_or_helo_if_needed() is None  # LHLO
        assert lmtp.mail("sender@example.org")[0] == 250
        replies = {rcpt: lmtp.rcpt(rcpt) for rcpt in (ALICE, FULL, BOB)}
        # LMTP answers DATA once per accepted recipient, in RCPT order.
        first = lmtp.data(message("m1"))
        second = lmtp.getreply()
    finally:
        lmtp.quit()
    assert replies[ALICE][0] == 250
    assert replies[BOB][0] == 250
    code, text = replies[FULL]
    assert (code, text.split()[0]) == (552, b"5.2.2"), replies[FULL]
    assert b"Quota exceeded" in text
    assert first[0] == 250 and ALICE.encode() in first[1], first
    assert second[0] == 250 and BOB.encode() in second[1], second
    assert inbox(dovecot, ALICE) == [message("m1")]
    assert inbox(dovecot, BOB) == [message("m1")]
    assert len(fetch_all(dovecot, FULL)) == 1, "only the message it held before"


def test_a_message_over_the_remaining_quota_is_refused_after_data_for_that_recipient_only(
    dovecot: Dovecot,
) -> None:
    lmtp = dovecot.lmtp()
    try:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("sender@example.org")
        # TIGHT is under its 1K quota at RCPT, so it is accepted there ...
        assert [lmtp.rcpt(r)[0] for r in (ALICE, TIGHT, BOB)] == [250, 250, 250]
        replies = [lmtp.data(message("big", 2000)), lmtp.getreply(), lmtp.getreply()]
    finally:
        lmtp.quit()
    # ... and refused in its own DATA reply, between two deliveries.
    assert [code for code, _ in replies] == [250, 552, 250], replies
    assert replies[1][1].startswith(b"5.2.2 <" + TIGHT.encode() + b">"), replies[1]
    assert inbox(dovecot, TIGHT) == []
    assert inbox(dovecot, ALICE) == inbox(dovecot, BOB) == [message("big", 2000)]


def test_lmtp_over_the_unix_socket_delivers(dovecot: Dovecot) -> None:
    lmtp = dovecot.lmtp(unix=True)
    try:
        refused = lmtp.sendmail("sender@example.org", [ALICE, FULL], message("unix"))
    finally:
        lmtp.quit()
    # smtplib reports a recipient refused at RCPT and delivers to the rest.
    assert list(refused) == [FULL] and refused[FULL][0] == 552
    assert inbox(dovecot, ALICE) == [message("unix")]


def test_an_unknown_recipient_is_refused_permanently(dovecot: Dovecot) -> None:
    lmtp = dovecot.lmtp()
    try:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("sender@example.org")
        code, text = lmtp.rcpt("nobody@dovecot.test")
    finally:
        lmtp.quit()
    assert (code, text.split()[0]) == (550, b"5.1.1"), (code, text)


def test_the_instance_is_private_and_stops_clean() -> None:
    with reachable_dir() as shared:
        dv = Dovecot(shared / "dovecot")
        dv.add_user(ALICE)
        with dv:
            assert dv.proc is not None and dv.proc.poll() is None
            group = dv.proc.pid  # the master leads its own process group
            config = dv.config_path.read_text()
            assert "include" not in config and "/etc/" not in config
            assert f"port = {dv.imap_port}" in config and f"port = {dv.lmtp_port}" in config
            dv.lmtp().quit()  # an lmtp child process, which must end with the master
        assert dv.proc is None
        with pytest.raises(OSError):
            smtplib.LMTP("127.0.0.1", dv.lmtp_port, timeout=2)
        assert live_members(group) == [], "a Dovecot process outlived stop()"


def test_a_port_taken_before_dovecot_binds_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.support.dovecot as harness

    with reachable_dir() as shared, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], harness.free_port()])
        monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or real_free_port())
        dv = Dovecot(shared / "dovecot")
        dv.add_user(ALICE)
        with dv:
            assert dv.imap_port != taken.getsockname()[1]
            dv.imap(ALICE).logout()
        assert "Address already in use" in dv.output(), "the first attempt met the taken port"
