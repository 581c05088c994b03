"""The LMTP connector against a private Dovecot (tests/support/dovecot.py): per-recipient
refusals over quota (at RCPT, and after DATA for a message bigger than what is left),
an unknown user, TCP and the Unix socket, one connection for several messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgate.connectors.lines import break_long_lines
from mailgate.connectors.lmtp import LmtpConnector, LmtpSession, LmtpTarget
from mailgate.model import Disposition
from mailgate.observe.events import EventLog
from tests.e2e.test_dovecot_lmtp_quota import ALICE, BOB, FULL, TIGHT, fetch_all, inbox, message
from tests.integration.test_smarthost import claim
from tests.support.dovecot import Dovecot, reachable_dir

D = Disposition
SENDER = "sender@example.org"


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


def session(dv: Dovecot, *, unix: bool = False) -> LmtpSession:
    host, port = (str(dv.lmtp_socket), 0) if unix else ("127.0.0.1", dv.lmtp_port)
    return LmtpConnector(LmtpTarget(host=host, port=port, lhlo="mx.test"), EventLog()).open()


def deliver(s: LmtpSession, rcpts: list[str], body: bytes, queue_id: str = "Q1") -> list[str]:
    claims = [claim(r, n, sender=SENDER, queue_id=queue_id) for n, r in enumerate(rcpts)]
    return [f"{r.disposition.value} {r.reply}" for r in s.deliver(claims, body)]


def test_three_recipients_one_over_quota_refused_at_rcpt_the_others_delivered(
    dovecot: Dovecot,
) -> None:
    s = session(dovecot)
    try:
        results = deliver(s, [ALICE, FULL, BOB], message("m1"))
    finally:
        s.close()
    assert results[0].startswith(f"delivered 250 2.0.0 <{ALICE}>"), results
    assert results[1].startswith("failed 552 5.2.2") and "Quota exceeded" in results[1], results
    assert results[2].startswith(f"delivered 250 2.0.0 <{BOB}>"), results
    assert inbox(dovecot, ALICE) == inbox(dovecot, BOB) == [message("m1")]
    assert len(fetch_all(dovecot, FULL)) == 1, "only the message it held before"


def test_a_message_over_the_remaining_quota_is_refused_after_data_for_that_recipient(
    dovecot: Dovecot,
) -> None:
    s = session(dovecot)
    try:
        results = deliver(s, [ALICE, TIGHT, BOB], message("big", 2000))
    finally:
        s.close()
    assert [r.split()[0:2] for r in results] == [
        ["delivered", "250"], ["failed", "552"], ["delivered", "250"],
    ], results  # fmt: skip
    assert f"5.2.2 <{TIGHT}>" in results[1]
    assert inbox(dovecot, TIGHT) == []
    # Its 2,000-octet line was broken for the peer (connectors/lines.py).
    big = break_long_lines(message("big", 2000))
    assert big != message("big", 2000)
    assert inbox(dovecot, ALICE) == inbox(dovecot, BOB) == [big]


def test_an_unknown_user_fails_permanently_the_others_delivered(dovecot: Dovecot) -> None:
    s = session(dovecot)
    try:
        results = deliver(s, ["nobody@dovecot.test", ALICE], message("m2"))
    finally:
        s.close()
    assert results[0].startswith("failed 550 5.1.1"), results
    assert results[1].startswith("delivered 250"), results
    assert inbox(dovecot, ALICE) == [message("m2")]


def test_over_the_unix_socket(dovecot: Dovecot) -> None:
    s = session(dovecot, unix=True)
    try:
        results = deliver(s, [ALICE, FULL], message("unix"))
    finally:
        s.close()
    assert [r.split()[0] for r in results] == ["delivered", "failed"], results
    assert inbox(dovecot, ALICE) == [message("unix")]


def test_one_connection_carries_several_messages(dovecot: Dovecot) -> None:
    s = session(dovecot)
    try:
        for n in range(4):
            assert deliver(s, [ALICE, BOB], message(f"m{n}"), f"Q{n}")[1].startswith("delivered")
        assert s.connections == 1
    finally:
        s.close()
    assert inbox(dovecot, ALICE) == [message(f"m{n}") for n in range(4)]
    assert inbox(dovecot, BOB) == [message(f"m{n}") for n in range(4)]
