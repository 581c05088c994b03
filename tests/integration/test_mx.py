"""Direct delivery (connectors/mx.py) against the DNS server on loopback and real SMTP sinks
on several loopback addresses (127.0.0.2, .3, .4 and ::1), all on one port, since DNS
cannot carry ports: preference order, hosts passed over within one attempt, 4xx and 5xx
per recipient, the implicit MX, null MX, NXDOMAIN, SERVFAIL, one transaction per domain,
connections reused per host, opportunistic TLS and its fallback, cancel."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.connectors.limits import Limits
from mailgate.connectors.mx import MxConnector, MxSession
from mailgate.connectors.resolve import DnsSettings
from mailgate.errors import TemporaryFailure
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Claim, Disposition
from mailgate.observe.events import EventLog
from tests.integration.test_smarthost import claim as smarthost_claim
from tests.integration.test_smarthost import deliver_in_thread
from tests.support.dns import DnsServer
from tests.support.process import free_port, wait_for
from tests.support.sink import HangingServer, Sink

D = Disposition
BODY = b"Subject: hi\r\n\r\nhello\r\n"
H2, H3, H4, V6 = "127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"


def claim(address: str, rid: int = 1, queue_id: str = "Q1") -> Claim:
    return smarthost_claim(address, rid, queue_id=queue_id, connector="mx")


def common_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (a few tries: another test may take one)."""
    for _ in range(20):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for host in hosts:
                    family = socket.AF_INET6 if ":" in host else socket.AF_INET
                    s = stack.enter_context(socket.socket(family))
                    s.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError(f"no port free on all of {hosts}")


class Net:
    """The DNS server, the sinks and silent servers on the mail hosts' addresses, and events."""

    def __init__(self, dns: DnsServer) -> None:
        self.dns = dns
        self.port = common_port([H2, H3, H4, V6])
        self.stack = contextlib.ExitStack()
        self.events = EventLog()
        self.seen: list[tuple[int, dict[str, Any]]] = []
        seen = self.seen

        class Seen(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                event, fields, _ = record.mailgate_event  # type: ignore[attr-defined]
                seen.append((event.id, dict(fields)))

        self.events.add_sink(Seen())

    def sink(self, host: str, **kw: Any) -> Sink:
        sink = Sink(self.port, host=host, **kw).start()
        self.stack.callback(sink.stop)
        return sink

    def silent(self, host: str, greeting: bytes = b"") -> HangingServer:
        server = HangingServer(self.port, host=host, greeting=greeting)
        self.stack.callback(server.stop)
        return server

    def session(self, **kw: Any) -> MxSession:
        dns = DnsSettings(nameservers=(self.dns.host,), port=self.dns.port, timeout=2.0)
        values: dict[str, Any] = {"dns": dns, "port": self.port, "timeout": 5.0}
        values.update(kw)
        session = MxConnector("mx.test", self.events, **values).open()
        self.stack.callback(session.close)
        return session

    def ids(self) -> list[int]:
        return [event for event, _ in self.seen]


@pytest.fixture
def net() -> Iterator[Net]:
    with DnsServer() as dns:
        n = Net(dns)
        with n.stack:
            yield n


def two_hosts(net: Net, domain: str = "a.test") -> None:
    net.dns.mx(domain, (20, f"mx2.{domain}"), (10, f"mx1.{domain}"))
    net.dns.a(f"mx1.{domain}", H2)
    net.dns.a(f"mx2.{domain}", H3)


def test_the_preferred_host_takes_the_message(net: Net) -> None:
    two_hosts(net)
    first, second = net.sink(H2), net.sink(H3)
    results = net.session().deliver([claim("x@a.test", 1), claim("y@a.test", 2)], BODY)
    assert [(r.disposition, r.remote_mta) for r in results] == [(D.DELIVERED, "mx1.a.test")] * 2
    assert [m.recipients for m in first.messages] == [["x@a.test", "y@a.test"]]
    assert second.messages == [] and second.connections == 0


def test_a_refused_connection_and_a_421_greeting_pass_to_the_next_host(net: Net) -> None:
    net.dns.mx("a.test", (10, "mx1.a.test"), (20, "mx2.a.test"), (30, "mx3.a.test"))
    net.dns.a("mx1.a.test", H2)  # nothing listens there: connection refused
    net.dns.a("mx2.a.test", H3)
    net.dns.a("mx3.a.test", H4)
    net.silent(H3, greeting=b"421 4.3.2 mx2 too busy\r\n")
    third = net.sink(H4)
    [result] = net.session().deliver([claim("x@a.test")], BODY)
    assert (result.disposition, result.remote_mta) == (D.DELIVERED, "mx3.a.test")
    assert len(third.messages) == 1
    failed = [fields for event, fields in net.seen if event == 2486]
    assert [f["host"] for f in failed] == ["mx1.a.test", "mx2.a.test"]
    assert "ConnectionRefusedError" in failed[0]["error"]
    assert failed[1]["error"] == "421 4.3.2 mx2 too busy"


def test_a_host_that_never_greets_times_out_and_the_next_takes_it(net: Net) -> None:
    two_hosts(net)
    net.silent(H2)
    second = net.sink(H3)
    [result] = net.session(timeout=1.0).deliver([claim("x@a.test")], BODY)
    assert (result.disposition, result.remote_mta) == (D.DELIVERED, "mx2.a.test")
    assert len(second.messages) == 1


def test_a_5xx_to_rcpt_is_final_a_4xx_goes_to_the_next_host(net: Net) -> None:
    two_hosts(net)
    first, second = net.sink(H2), net.sink(H3)
    first.fail("RCPT", "550 5.1.1 no such user", address="gone@a.test")
    first.fail("RCPT", "451 4.7.1 greylisted", address="grey@a.test")
    addresses = ["ok@a.test", "gone@a.test", "grey@a.test"]
    results = net.session().deliver([claim(a, n) for n, a in enumerate(addresses)], BODY)
    assert [(r.disposition, r.reply, r.remote_mta) for r in results] == [
        (D.DELIVERED, "250 2.0.0 OK: queued", "mx1.a.test"),
        (D.FAILED, "550 5.1.1 no such user", "mx1.a.test"),
        (D.DELIVERED, "250 2.0.0 OK: queued", "mx2.a.test"),
    ]
    assert [m.recipients for m in first.messages] == [["ok@a.test"]]
    assert [m.recipients for m in second.messages] == [["grey@a.test"]], "the 5xx was not retried"


def test_when_every_host_defers_the_last_reply_stands(net: Net) -> None:
    two_hosts(net)
    net.sink(H2).fail("MAIL", "451 4.3.0 mx1 later")
    net.sink(H3).fail("RCPT", "452 4.2.2 mx2 full")
    [result] = net.session().deliver([claim("x@a.test")], BODY)
    assert (result.disposition, result.reply) == (D.DEFERRED, "452 4.2.2 mx2 full")


def test_every_host_unreachable_defers(net: Net) -> None:
    two_hosts(net)  # nothing listens on either
    [result] = net.session().deliver([claim("x@a.test")], BODY)
    assert result.disposition is D.DEFERRED
    assert result.reply.startswith(f"451 4.4.1 mx2.a.test [{H3}]: ConnectionRefusedError")
    assert net.ids() == [2486, 2486]
    assert net.seen[-1][1]["next"] == "no other host to try in this attempt"


def test_max_addresses_bounds_the_hosts_tried(net: Net) -> None:
    net.dns.mx("a.test", (10, "mx1.a.test"), (20, "mx2.a.test"))
    net.dns.a("mx1.a.test", H2, H3)
    net.dns.a("mx2.a.test", H4)
    sink = net.sink(H4)
    [result] = net.session(max_addresses=2).deliver([claim("x@a.test")], BODY)
    assert result.disposition is D.DEFERRED and sink.connections == 0
    assert net.ids() == [2486, 2486]


def test_without_mx_the_domain_address_is_the_mail_host(net: Net) -> None:
    net.dns.a("plain.test", H4)
    sink = net.sink(H4)
    [result] = net.session().deliver([claim("x@plain.test")], BODY)
    assert (result.disposition, result.remote_mta) == (D.DELIVERED, "plain.test")
    assert len(sink.messages) == 1


def test_an_ipv6_only_host(net: Net) -> None:
    net.dns.mx("six.test", (10, "mx.six.test"))
    net.dns.aaaa("mx.six.test", V6)
    sink = net.sink(V6)
    [result] = net.session().deliver([claim("x@six.test")], BODY)
    assert result.disposition is D.DELIVERED and len(sink.messages) == 1


def test_a_null_mx_bounces_at_once(net: Net) -> None:
    net.dns.null_mx("nomail.test")
    net.dns.a("nomail.test", H2)
    sink = net.sink(H2)
    results = net.session().deliver([claim("x@nomail.test", 1), claim("y@nomail.test", 2)], BODY)
    assert {(r.disposition, r.reply) for r in results} == {
        (D.FAILED, "556 5.1.10 nomail.test accepts no mail (null MX, RFC 7505)")
    }
    assert sink.connections == 0
    assert net.seen == [(2484, net.seen[0][1])] and net.seen[0][1]["count"] == 2


def test_nxdomain_bounces_servfail_defers(net: Net) -> None:
    two_hosts(net, "flaky.test")
    net.dns.servfail("flaky.test")
    session = net.session()
    gone, flaky = session.deliver([claim("x@nowhere.test", 1), claim("y@flaky.test", 2)], BODY)
    assert gone.disposition is D.FAILED and gone.reply.startswith("550 5.1.2 nowhere.test")
    assert flaky.disposition is D.DEFERRED and flaky.reply.startswith("451 4.4.3")
    assert net.ids() == [2485, 2483]


def test_one_transaction_per_domain_results_in_order(net: Net) -> None:
    two_hosts(net, "a.test")
    net.dns.mx("b.test", (10, "mx.b.test"))
    net.dns.a("mx.b.test", H4)
    a_sink, b_sink = net.sink(H2), net.sink(H4)
    addresses = ["one@a.test", "one@b.test", "two@A.TEST"]
    results = net.session().deliver([claim(a, n) for n, a in enumerate(addresses)], BODY)
    assert [r.remote_mta for r in results] == ["mx1.a.test", "mx.b.test", "mx1.a.test"]
    assert [m.recipients for m in a_sink.messages] == [["one@a.test", "two@A.TEST"]]
    assert [m.recipients for m in b_sink.messages] == [["one@b.test"]]


def test_one_connection_per_host_across_messages_and_domains(net: Net) -> None:
    for domain in ("a.test", "b.test"):
        net.dns.mx(domain, (10, "mx.shared.test"))
    net.dns.a("mx.shared.test", H2)
    sink = net.sink(H2)
    session = net.session()
    for n, domain in enumerate(["a.test", "b.test", "a.test"]):
        [result] = session.deliver([claim(f"x@{domain}", n, f"Q{n}")], BODY)
        assert result.disposition is D.DELIVERED
    assert sink.connections == 1 and len(sink.messages) == 3
    sink.stop()  # dropped while idle: replaced at the next message, transparently
    sink.start()
    [result] = session.deliver([claim("x@a.test", 9, "Q9")], BODY)
    assert result.disposition is D.DELIVERED and sink.connections == 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mailgate.security.certs import generate

    return generate(tmp_path_factory.mktemp("pki"), "localhost")


def server_tls(pki: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*pki)
    return context


def test_starttls_when_offered_without_verification(net: Net, pki: tuple[Path, Path]) -> None:
    net.dns.mx("a.test", (10, "mx.a.test"))
    net.dns.a("mx.a.test", H2)
    sink = net.sink(H2, tls=server_tls(pki))  # a self-signed certificate for "localhost"
    session = net.session()
    [result] = session.deliver([claim("x@a.test")], BODY)
    assert result.disposition is D.DELIVERED
    conn = session._held["mx.a.test"].slot.conn
    assert conn is not None and isinstance(conn.sock, ssl.SSLSocket)
    assert net.ids() == [] and len(sink.messages) == 1


def test_a_failed_handshake_is_retried_in_plain_text_unless_verifying(
    net: Net, pki: tuple[Path, Path]
) -> None:
    net.dns.mx("a.test", (10, "mx.a.test"))
    net.dns.a("mx.a.test", H2)
    broken = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no certificate: every handshake fails
    sink = net.sink(H2, tls=broken)
    [result] = net.session().deliver([claim("x@a.test")], BODY)
    assert result.disposition is D.DELIVERED and len(sink.messages) == 1
    assert net.ids() == [2487] and "STARTTLS failed" in net.seen[0][1]["error"]
    [result] = net.session(verify=True).deliver([claim("y@a.test", 2, "Q2")], BODY)
    assert result.disposition is D.DEFERRED and "STARTTLS failed" in result.reply
    assert len(sink.messages) == 1, "never sent in clear when the certificate is checked"


def test_cancel_breaks_the_connection_to_the_host(net: Net) -> None:
    for domain in ("a.test", "elsewhere.org"):  # deliver_in_thread's recipient: r@elsewhere.org
        net.dns.mx(domain, (10, "mx.a.test"))
    net.dns.a("mx.a.test", H2)
    sink = net.sink(H2)
    sink.hang("MAIL")
    session = net.session()
    thread, out = deliver_in_thread(session)
    wait_for(lambda: sink.hanging == 1, 10, what="the hung MAIL")
    assert session.cancel("Q1") == "its connection to the mail host was broken"
    thread.join(10)
    [failure] = out
    assert isinstance(failure, TemporaryFailure) and failure.reply == CANCELLED_REPLY
    sink.release()
    [result] = session.deliver([claim("x@a.test", 2, "Q2")], BODY)
    assert result.disposition is D.DELIVERED


def test_a_host_at_its_limit_defers_rather_than_passing_to_the_next(net: Net) -> None:
    two_hosts(net)
    first, second = net.sink(H2), net.sink(H3)
    first.hang("MAIL")
    connector = MxConnector(
        "mx.test", net.events, port=net.port, limits=Limits(connections=1, wait=0),
        dns=DnsSettings(nameservers=(net.dns.host,), port=net.dns.port),
    )  # fmt: skip
    busy, other = connector.open(), connector.open()
    net.stack.callback(busy.close)
    net.stack.callback(other.close)
    net.dns.mx("elsewhere.org", (10, "mx1.a.test"), (20, "mx2.a.test"))
    thread, out = deliver_in_thread(busy)  # r@elsewhere.org, by mx1.a.test, hung in MAIL
    wait_for(lambda: first.hanging == 1, 10, what="the hung MAIL")
    [result] = other.deliver([claim("x@a.test", 2, "Q2")], BODY)
    assert result.disposition is D.DEFERRED
    assert result.reply.startswith("451 4.4.5 mx1.a.test: limit of 1 connection(s) open")
    assert second.connections == 0, "the limit spares the provider: no detour to mx2"
    assert 2488 in net.ids()
    first.release()
    thread.join(10)
    assert out and out[0][0].disposition is D.DELIVERED
