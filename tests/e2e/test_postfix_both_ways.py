"""Real Postfix on both sides of mailgate (issue 15 point 2), private instances on loopback
ports (tests/support/postfix.py), never the system's:

- Postfix in front: mail for the postoffice domain reaches mailgate through Postfix's
  relayhost, and through transport_maps, and lands in the postoffice mailbox;
- Postfix behind: a `[[connector]] type = "smtp"` relays to Postfix, which delivers into
  its own Maildir (virtual(8));
- bounces: an unknown Postfix user (550 5.1.1 at RCPT) comes back to the sender's postoffice
  mailbox as mailgate's RFC 3464 report, and a recipient Postfix accepted and then could not
  deliver (its next hop, by transport_maps, refused it with 550) comes back as Postfix's own
  report, through the transport to mailgate. (An `error:` transport would not do: Postfix
  refuses such a recipient at RCPT already.)
"""

from __future__ import annotations

import email
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.test_postfix_instance import _postfix_available
from tests.support.postfix import PostfixInstance, private
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

pytestmark = [pytest.mark.usefixtures(_postfix_available.__name__), pytest.mark.timeout(120)]

ALICE = "alice@po1.net1.example.test"  # a postoffice mailbox (MS:NET1/PO1/ALICE)
BOB = "bob@po1.net1.example.test"
U1, U2 = "u1@postfix.test", "u2@postfix.test"  # Postfix's own virtual mailboxes
DEAD = "dead@postfix.test"  # accepted by Postfix, then refused by the next hop it relays to


def message(subject: str, sender: str = "someone@client.test", to: str = ALICE) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n\r\nhello {subject}\r\n"
    ).encode()


def submit(port: int, sender: str, rcpts: list[str], body: bytes) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return dict(client.sendmail(sender, rcpts, body))


def mailbox(mg: Mailgate, mbx: str) -> list[EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for p in mg.delivered("NET1", "PO1", mbx)
    ]


def reports(mg: Mailgate, mbx: str = "ALICE") -> list[EmailMessage]:
    return [m for m in mailbox(mg, mbx) if m.get_content_type() == "multipart/report"]


def maildir(pf: PostfixInstance, address: str) -> list[bytes]:
    new = pf.maildir(address) / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def status_of(report: EmailMessage) -> list[tuple[str, str]]:
    """(Final-Recipient, Status) of each recipient block of an RFC 3464 report."""
    assert report.get_param("report-type") == "delivery-status", report["Content-Type"]
    part = list(report.iter_parts())[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()[1:]  # type: ignore[index]
    return [(str(b["Final-Recipient"]), str(b["Status"])) for b in blocks]


def mailgate_config(pf_port: int) -> str:
    return (
        DEFAULT_CONFIG
        + f"""
[queue]
retry_min = "1s"
retry_max = "2s"

[[connector]]
name = "postfix"
type = "smtp"
host = "127.0.0.1"
port = {pf_port}
starttls = "none"
threads = 1

[[route]]
match = "MS:*/*/*"
connector = "postoffice"

[[route]]
match = "*@postfix.test"
connector = "postfix"
"""
    )


@pytest.fixture
def pair() -> Iterator[tuple[Mailgate, PostfixInstance]]:
    """mailgate with ALICE and BOB, relaying *@postfix.test to a Postfix that holds U1 and U2
    (and DEAD), and sends mail for the postoffice domain back to mailgate by transport_maps."""
    root = Path(tempfile.mkdtemp(prefix="mg-pf-"))
    next_hop = Sink().start()
    next_hop.fail("RCPT", "550 5.2.1 mailbox disabled", address=DEAD)
    try:
        root.chmod(0o755)
        for sub in ("mailgate", "postfix"):
            (root / sub).mkdir()
        mg = Mailgate(root / "mailgate")  # picks its port now; configured once Postfix has its
        routes = [
            f"po1.net1.example.test smtp:[127.0.0.1]:{mg.port}",
            f"{DEAD} smtp:[127.0.0.1]:{next_hop.port}",
        ]
        (root / "transport").write_text("".join(f"{line}\n" for line in routes))
        transport = {
            "transport_maps": f"texthash:{root}/transport",
            "relay_domains": "po1.net1.example.test",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
        }
        with PostfixInstance(root / "postfix", mailboxes=[U1, U2, DEAD], main_cf=transport) as pf:
            mg.config_path.write_text(mailgate_config(pf.port))
            mg.add_mailbox("MS:NET1/PO1/ALICE")
            mg.add_mailbox("MS:NET1/PO1/BOB")
            mg.start()
            try:
                yield mg, pf
            finally:
                mg.close()
    finally:
        next_hop.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_postfix_relays_to_mailgate_as_its_relayhost(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        with private(mailboxes=[], relayhost=f"127.0.0.1:{mg.port}") as pf:
            submit(pf.port, "someone@client.test", [ALICE], message("via relayhost"))
            [got] = wait_for(lambda: mailbox(mg, "ALICE"), 20, what="the message in ALICE")
            assert got["Subject"] == "via relayhost"
            assert "postfix.test" in str(got["Received"]), "Postfix's hop is in the trace"
            assert "status=sent" in pf.maillog()
    finally:
        mg.close()


def test_postfix_relays_to_mailgate_by_transport_and_mailgate_to_postfix_maildir(
    pair: tuple[Mailgate, PostfixInstance],
) -> None:
    mg, pf = pair
    # Postfix in front: its transport_maps sends the postoffice domain to mailgate.
    submit(pf.port, "someone@client.test", [BOB], message("via transport", to=BOB))
    [got] = wait_for(lambda: mailbox(mg, "BOB"), 20, what="the message in BOB")
    assert got["Subject"] == "via transport"
    # Postfix behind: the named connector relays to Postfix, which delivers to its Maildirs.
    submit(mg.port, ALICE, [U1, U2], message("to postfix", sender=ALICE, to=U1))
    for user in (U1, U2):
        [raw] = wait_for(lambda u=user: maildir(pf, u), 20, what=f"the message in {user}")
        assert b"Subject: to postfix" in raw and b"hello to postfix" in raw
    sent = mg.wait_events(2448, timeout=20, count=3)  # Sent, one per recipient
    assert sorted((e["fields"]["recipient"], e["fields"]["connector"]) for e in sent) == [
        (BOB, "postoffice"), (U1, "postfix"), (U2, "postfix")
    ]  # fmt: skip
    assert "250" in sent[-1]["fields"]["reply"], "Postfix's own reply is kept"
    assert not reports(mg), "nothing bounced"


def test_a_refusal_and_a_bounce_after_acceptance_come_back_as_rfc3464_reports(
    pair: tuple[Mailgate, PostfixInstance],
) -> None:
    mg, pf = pair
    # Unknown at Postfix: 550 5.1.1 at RCPT, so mailgate bounces it to ALICE at once;
    # U1 in the same message is delivered.
    submit(mg.port, ALICE, ["nobody@postfix.test", U1], message("one unknown", sender=ALICE))
    [report] = wait_for(lambda: reports(mg), 20, what="mailgate's report in ALICE")
    assert status_of(report) == [("rfc822; nobody@postfix.test", "5.1.1")]
    assert "550" in report.as_string()
    wait_for(lambda: maildir(pf, U1), 20, what="U1's copy")
    assert not reports(mg, "BOB")
    # Accepted by Postfix, then refused by its next hop: Postfix's own report (null sender)
    # comes back through its transport to mailgate, into the sender's mailbox: BOB's.
    submit(mg.port, BOB, [DEAD], message("accepted then failed", sender=BOB, to=DEAD))
    [late] = wait_for(lambda: reports(mg, "BOB"), 30, what="Postfix's report in BOB")
    [(recipient, status)] = status_of(late)
    assert recipient.lower() == f"rfc822; {DEAD}" and status == "5.2.1", (recipient, status)
    assert "postfix.test" in str(late["From"]).lower(), "Postfix's report, not mailgate's"
    assert "mailbox disabled" in late.as_string()
    assert len(reports(mg)) == 1, "ALICE got no second report"
