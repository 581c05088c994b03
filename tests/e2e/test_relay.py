"""Issue 3 end to end: smarthost relay, retries, bounces, pickup, against a real scriptable sink.
(Permanent failures and mail loops: test_kb_q151791_resubmitted_forever.py.)"""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

ALICE = "alice@po1.net1.example.test"
BOB = "bob@po1.net1.example.test"

FAST = """
[queue]
retry_min = "1s"
retry_max = "2s"

[pickup]
interval = "0.2s"
settle = "0s"

[smarthost]
threads = 1
down_for = "1s"
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture
def relay(tmp_path: Path, sink: Sink) -> Iterator[Mailgate]:
    """mailgate with mailboxes ALICE and BOB, relaying everything else to the sink."""
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        yield mg
    finally:
        mg.close()


def send(mg: Mailgate, sender: str, rcpts: list[str], body: bytes) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        return dict(client.sendmail(sender, rcpts, body))


def bounces(mg: Mailgate, mbx: str = "ALICE") -> list[email.message.Message]:
    found = []
    for path in mg.delivered("NET1", "PO1", mbx):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if message.get_content_type() == "multipart/report":
            found.append(message)
    return found


def failed_recipients(report: email.message.Message) -> list[str]:
    status = list(report.iter_parts())[1]
    return [str(block["Final-Recipient"]) for block in status.get_payload()[1:]]


def test_relay_to_smarthost(relay: Mailgate, sink: Sink) -> None:
    assert send(relay, ALICE, ["friend@elsewhere.org"], b"Subject: out\r\n\r\nhello\r\n") == {}
    [message] = sink.wait_messages(1)
    assert message.sender == ALICE and message.recipients == ["friend@elsewhere.org"]
    assert b"Received: from" in message.content and b"hello" in message.content
    sent = wait_for(lambda: relay.events(2448), 5, what="Sent event")
    assert sent[0]["fields"]["connector"] == "smarthost"


def test_temporary_failure_is_retried_and_delivered_once(relay: Mailgate, sink: Sink) -> None:
    sink.fail("DATA", "451 4.3.0 try again later", times=1)
    send(relay, ALICE, ["friend@elsewhere.org"], b"Subject: retry\r\n\r\nagain\r\n")
    deferred = wait_for(lambda: relay.events(2400), 10, what="Deferred event")
    assert "451 4.3.0 try again later" in deferred[0]["message"]
    sink.wait_messages(1, timeout=15)
    wait_for(lambda: relay.events(2448), 5, what="Sent event")
    assert len(sink.messages) == 1
    assert relay.events(2448)[0]["fields"]["attempts"] == 2


def test_mixed_recipients_end_right_with_one_bounce(relay: Mailgate, sink: Sink) -> None:
    sink.fail("RCPT", "550 5.1.1 rejected", address="bad@elsewhere.org")
    rcpts = [BOB, "ok@elsewhere.org", "bad@elsewhere.org"]
    send(relay, ALICE, rcpts, b"Subject: mixed\r\n\r\nmixed\r\n")
    [report] = wait_for(lambda: bounces(relay), 10, what="a bounce")
    assert failed_recipients(report) == ["rfc822; bad@elsewhere.org"]
    assert [m.recipients for m in sink.messages] == [["ok@elsewhere.org"]]
    assert len(relay.delivered("NET1", "PO1", "BOB")) == 1
    # A bounce is queued in the commit that finishes the message (4003): once the message
    # and its bounce are both done, every bounce it will ever have is in the mailbox.
    [received] = wait_for(lambda: relay.events(3000), 5, what="MessageReceived")
    original = received["fields"]["queue_id"]
    [ndr] = wait_for(lambda: relay.events(2117), 10, what="NdrGenerated")
    assert ndr["fields"]["queue_id"] == original
    done = {original, ndr["fields"]["bounce_id"]}
    wait_for(
        lambda: done <= {e["fields"]["queue_id"] for e in relay.events(4003)},
        10,
        what="the message and its bounce done",
    )
    assert len(relay.events(2117)) == 1
    assert len(bounces(relay)) == 1


def test_connections_are_reused(relay: Mailgate, sink: Sink) -> None:
    for n in range(5):
        send(relay, ALICE, [f"r{n}@elsewhere.org"], f"Subject: {n}\r\n\r\n{n}\r\n".encode())
        sink.wait_messages(n + 1)
    assert sink.connections == 1


def test_recipients_of_one_message_share_one_transaction(relay: Mailgate, sink: Sink) -> None:
    rcpts = [f"r{n}@elsewhere.org" for n in range(5)]
    send(relay, ALICE, rcpts, b"Subject: many\r\n\r\nmany\r\n")
    [message] = sink.wait_messages(1)
    assert sorted(message.recipients) == rcpts


def test_relay_denied_outside_relay_networks(tmp_path: Path, sink: Sink) -> None:
    config = DEFAULT_CONFIG + '\n[smtp]\nrelay_networks = ["10.0.0.0/8"]\n'
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("x@example.org")
            code, text = client.rcpt("victim@elsewhere.org")
            assert (code, text[:5]) == (554, b"5.7.1")
            assert client.rcpt(ALICE)[0] == 250, "local delivery is still accepted"
        assert mg.wait_events(3002)
    finally:
        mg.close()
    assert sink.messages == []


def test_dead_smarthost_defers_then_recovers(tmp_path: Path) -> None:
    sink = Sink()
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")  # nothing listens there yet
    try:
        send(mg, ALICE, ["later@elsewhere.org"], b"Subject: later\r\n\r\nlater\r\n")
        wait_for(lambda: mg.events(2460), 10, what="SmarthostUnreachable")
        wait_for(lambda: mg.events(2400), 10, what="Deferred")
        sink.start()
        sink.wait_messages(1, timeout=20)
        wait_for(lambda: mg.events(2461), 5, what="SmarthostRecovered")
    finally:
        mg.close()
        sink.stop()


def test_undeliverable_bounce_goes_to_the_postmaster_once(tmp_path: Path, sink: Sink) -> None:
    config = DEFAULT_CONFIG + FAST + f'\n[dsn]\npostmaster = "{ALICE}"\n'
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        sink.fail("RCPT", "550 5.1.1 no", address="gone@elsewhere.org")
        # The sender's mailbox does not exist: the bounce to it fails, the postmaster is told.
        ghost = "ghost@po1.net1.example.test"
        send(mg, ghost, ["gone@elsewhere.org"], b"Subject: x\r\n\r\nx\r\n")
        [report] = wait_for(lambda: bounces(mg), 15, what="double bounce to postmaster")
        assert failed_recipients(report) == [f"rfc822; {ghost}"]
        kinds = [e["fields"]["kind"] for e in mg.wait_events(2117, count=2)]
        assert kinds == ["bounce", "double-bounce"]
    finally:
        mg.close()


def test_pickup_file_is_relayed_and_removed(relay: Mailgate, sink: Sink) -> None:
    outbox = relay.data_dir / "postoffice" / "NET1" / "PO1" / "outbox"
    assert outbox.is_dir(), "created with the postoffice"
    (outbox / "msg1.eml").write_bytes(
        b"X-Sender: MS:NET1/PO1/ALICE\nX-Receiver: far@elsewhere.org\n"
        b"Subject: from a legacy app\nTo: far@elsewhere.org\n\nhello from pickup\n"
    )
    [message] = sink.wait_messages(1)
    assert message.sender == ALICE and message.recipients == ["far@elsewhere.org"]
    assert b"X-Sender" not in message.content and b"hello from pickup\r\n" in message.content
    assert b"Message-ID:" in message.content and b"Date:" in message.content
    wait_for(lambda: not list(outbox.iterdir()) or list(outbox.iterdir()) == [outbox / ".work"], 5)
    assert not (outbox / "msg1.eml").exists() and relay.wait_events(2444)


def test_unparseable_pickup_file_goes_to_badmail(relay: Mailgate, sink: Sink) -> None:
    outbox = relay.data_dir / "postoffice" / "NET1" / "PO1" / "outbox"
    assert outbox.is_dir(), "created with the postoffice"
    (outbox / "junk.txt").write_bytes(b"this is not a message at all\n")
    badmail = relay.data_dir / "badmail"
    wait_for(lambda: badmail.exists() and len(list(badmail.iterdir())) == 2, 10, what="badmail")
    reasons = list(badmail.glob("*.reason"))
    assert len(reasons) == 1 and "reason:" in reasons[0].read_text()
    assert relay.wait_events(2445) and sink.messages == []


def test_delay_warning_is_sent_once(tmp_path: Path, sink: Sink) -> None:
    sink.fail("RCPT", "451 4.2.1 mailbox busy, try later")
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST + '\n[dsn]\ndelay_warning = "2s"\n')
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        send(mg, ALICE, ["slow@elsewhere.org"], b"Subject: slow\r\n\r\nslow\r\n")
        [report] = wait_for(lambda: bounces(mg), 20, what="a delay warning")
        assert report["Subject"] == "Delayed Mail (still being retried)"
        block = list(report.iter_parts())[1].get_payload()[1]
        assert block["Action"] == "delayed" and block["Status"] == "4.2.1"
        mg.wait_events(2119)
        mg.wait_events(2400, count=3)  # still being retried afterwards...
        assert len(bounces(mg)) == 1, "...but the sender is told only once"
        assert len(mg.events(2119)) == 1
    finally:
        mg.close()
