"""Direct delivery through a running `mailgate run` with `[[connector]] type = "smtp"
mx = true` and `[dns] nameservers` pointing at the DNS server on loopback (issue 15 point 1):
the preferred host first and the next within the same attempt, the A record when there is
no MX, a null MX bounced at once into the sender's postoffice mailbox as an RFC 3464
report. Mail hosts are sinks on several loopback addresses sharing one port (the
connector's `port`), since DNS carries no ports."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from tests.integration.test_mx import H2, H3, H4, common_port
from tests.support.dns import DnsServer
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

ALICE = "alice@po1.net1.example.test"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def start(tmp_path: Path, dns: DnsServer, port: int) -> Mailgate:
    config = (
        DEFAULT_CONFIG
        + f"""
[dns]
nameservers = ["{dns.host}"]
port = {dns.port}
timeout = "3s"

[[connector]]
name = "internet"
type = "smtp"
mx = true
port = {port}
timeout = "5s"
threads = 1

[[route]]
match = "MS:*/*/*"
connector = "postoffice"

[[route]]
match = "*"
connector = "internet"
"""
    )
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    return mg


def send(mg: Mailgate, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        body = f"From: <{ALICE}>\r\nSubject: {subject}\r\n\r\nbody\r\n"
        client.sendmail(ALICE, rcpts, body)


def reports(mg: Mailgate) -> list[email.message.EmailMessage]:
    found = []
    for path in mg.delivered("NET1", "PO1", "ALICE"):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if message.get_content_type() == "multipart/report":
            found.append(message)
    return found  # type: ignore[return-value]


def test_mx_order_next_host_in_one_attempt_a_fallback_and_null_mx(
    tmp_path: Path, dns: DnsServer
) -> None:
    port = common_port([H2, H3, H4])
    # a.test: its preferred host (H2) has nothing listening; the second (H3) takes the mail.
    dns.mx("a.test", (20, "mx2.a.test"), (10, "mx1.a.test"))
    dns.a("mx1.a.test", H2)
    dns.a("mx2.a.test", H3)
    # b.test: no MX record at all, so its own A record is the mail host (RFC 5321 5.1).
    dns.a("b.test", H4)
    # c.test: a null MX (RFC 7505).
    dns.null_mx("c.test")
    with Sink(port, host=H3) as second, Sink(port, host=H4) as implicit:
        mg = start(tmp_path, dns, port)
        try:
            send(mg, ["u@a.test"], "to a")
            [got] = second.wait_messages(1)
            assert got.recipients == ["u@a.test"]
            [passed] = mg.wait_events(2486)  # MxHostFailed: mx1 passed over
            assert passed["fields"]["host"] == "mx1.a.test"
            assert passed["fields"]["next"] == "trying the next"
            assert not mg.events(2400), "delivered within the first attempt, no deferral"
            asked = [(q.name, q.rdtype) for q in dns.queries]
            assert ("a.test", "MX") in asked and ("mx1.a.test", "A") in asked

            send(mg, ["v@b.test"], "to b")
            assert implicit.wait_messages(1)[0].recipients == ["v@b.test"]

            send(mg, ["w@c.test"], "to c")
            [report] = wait_for(lambda: reports(mg), 15, what="the null MX bounce")
            assert report.get_param("report-type") == "delivery-status"
            status = list(report.iter_parts())[1]
            blocks = status.get_payload()
            assert str(blocks[1]["Final-Recipient"]) == "rfc822; w@c.test"
            assert str(blocks[1]["Status"]) == "5.1.10"
            assert "null MX" in str(blocks[1]["Diagnostic-Code"])
            [null] = mg.wait_events(2484)
            assert null["fields"]["domain"] == "c.test"
            assert not mg.events(2400), "a null MX is not retried"
            assert len(second.messages) == len(implicit.messages) == 1
            assert mg.stop() == 0
        finally:
            mg.close()


def test_a_lookup_that_fails_defers_and_delivers_once_dns_answers(
    tmp_path: Path, dns: DnsServer
) -> None:
    port = common_port([H2])
    dns.mx("d.test", (10, "mx.d.test"))
    dns.a("mx.d.test", H2)
    dns.servfail("d.test")
    with Sink(port, host=H2) as host:
        mg = start(tmp_path, dns, port)
        try:
            send(mg, ["x@d.test"], "to d")
            [failed] = mg.wait_events(2483)  # MxLookupFailed: deferred, not bounced
            assert failed["fields"]["domain"] == "d.test"
            dns.answer("d.test")
            assert mg.cli("queue", "retry", "--all").returncode == 0
            assert host.wait_messages(1, timeout=20)[0].recipients == ["x@d.test"]
            assert not reports(mg)
        finally:
            mg.close()
