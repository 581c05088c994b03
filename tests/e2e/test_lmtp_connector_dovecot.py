"""mailgate delivering to a private Dovecot's LMTP through a `[[connector]] type = "lmtp"`,
under `mailgate run`, over TCP and over the Unix socket (issue 15 point 3): of one message's
four recipients two are delivered, one over quota is refused at RCPT and one whose quota the
message would exceed is refused in its own reply after DATA; each outcome is recorded on
its own recipient, and the two refusals come back to the sender's postoffice mailbox as an
RFC 3464 report with Dovecot's reply."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_dovecot_lmtp_quota import ALICE, BOB, FULL, TIGHT, fetch_all
from tests.e2e.test_postfix_both_ways import reports, status_of
from tests.integration import test_lmtp_dovecot
from tests.support.dovecot import Dovecot
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

dovecot = test_lmtp_dovecot.dovecot  # the fixture: ALICE, BOB, FULL (over quota), TIGHT
CAROL = "carol@po1.net1.example.test"  # the sender, a postoffice mailbox


def connector(dv: Dovecot, unix: bool) -> str:
    where = f'socket = "{dv.lmtp_socket}"' if unix else f'host = "127.0.0.1"\nport = {dv.lmtp_port}'
    return f'[[connector]]\nname = "dovecot"\ntype = "lmtp"\n{where}\nthreads = 1\n'


@pytest.fixture(params=["tcp", "unix"])
def mailgate(
    request: pytest.FixtureRequest, tmp_path: Path, dovecot: Dovecot
) -> Iterator[Mailgate]:
    routes = (
        '[[route]]\nmatch = "MS:*/*/*"\nconnector = "postoffice"\n\n'
        '[[route]]\nmatch = "*@dovecot.test"\nconnector = "dovecot"\n'
    )
    config = "\n".join([DEFAULT_CONFIG, connector(dovecot, request.param == "unix"), routes])
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/CAROL")
    mg.start()
    try:
        yield mg
    finally:
        mg.close()


def test_each_recipient_gets_its_own_outcome_and_the_refused_bounce(
    mailgate: Mailgate, dovecot: Dovecot
) -> None:
    body = f"From: <{CAROL}>\r\nSubject: quota\r\n\r\n".encode() + b"y" * 2000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", mailgate.port, timeout=10) as client:
        assert client.sendmail(CAROL, [ALICE, FULL, BOB, TIGHT], body) == {}

    def sent() -> list[str]:
        return sorted(
            e["fields"]["recipient"]
            for e in mailgate.events(2448)
            if e["fields"]["connector"] == "dovecot"
        )

    wait_for(lambda: len(sent()) == 2, 20, what="two recipients delivered by LMTP")
    assert sent() == sorted([ALICE, BOB])

    def refused() -> list[tuple[str, str]]:
        return sorted(block for report in reports(mailgate, "CAROL") for block in status_of(report))

    wait_for(lambda: len(refused()) == 2, 20, what="both refusals reported")
    assert refused() == sorted([(f"rfc822; {FULL}", "5.2.2"), (f"rfc822; {TIGHT}", "5.2.2")])
    text = "".join(r.as_string() for r in reports(mailgate, "CAROL"))
    assert "552" in text and "Quota exceeded" in text, text[-1500:]
    for address in (ALICE, BOB):
        [copy] = fetch_all(dovecot, address)
        assert b"Subject: quota" in copy
    assert fetch_all(dovecot, TIGHT) == []
    assert len(fetch_all(dovecot, FULL)) == 1, "only the message it held before"
    assert not mailgate.events(2400), "nothing deferred: Dovecot's refusals are permanent"
