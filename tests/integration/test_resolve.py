"""MX selection (connectors/resolve.py) against the DNS server on loopback (tests/support/dns.py):
preference order, equal preferences shuffled, the implicit MX, null MX, NXDOMAIN, hosts
without addresses, SERVFAIL and silence, truncation, address literals."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from mailgate.connectors.resolve import DnsSettings, LookupFailure, MailHost, MailResolver
from tests.support.dns import DnsServer


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as s:
        yield s


def resolver(
    server: DnsServer, *, seed: int = 1, timeout: float = 2.0, ipv6: bool = True
) -> MailResolver:
    settings = DnsSettings(nameservers=(server.host,), port=server.port, timeout=timeout, ipv6=ipv6)
    return MailResolver(settings, rng=random.Random(seed))


def failure(r: MailResolver, domain: str) -> LookupFailure:
    with pytest.raises(LookupFailure) as caught:
        r.mail_hosts(domain)
    return caught.value


def test_hosts_in_preference_order_with_their_addresses(server: DnsServer) -> None:
    server.mx("a.test", (20, "mx2.a.test"), (10, "mx1.a.test"), (30, "mx3.a.test"))
    server.a("mx1.a.test", "127.0.0.2")
    server.aaaa("mx1.a.test", "::1")
    server.a("mx2.a.test", "127.0.0.3", "127.0.0.4")
    server.a("mx3.a.test", "127.0.0.5")
    hosts = resolver(server).mail_hosts("A.Test")
    assert hosts == [
        MailHost("mx1.a.test", 10, ("127.0.0.2", "::1")),  # IPv4 first
        MailHost("mx2.a.test", 20, hosts[1].addresses),
        MailHost("mx3.a.test", 30, ("127.0.0.5",)),
    ]
    assert sorted(hosts[1].addresses) == ["127.0.0.3", "127.0.0.4"]
    assert resolver(server, ipv6=False).mail_hosts("a.test")[0].addresses == ("127.0.0.2",)


def test_equal_preferences_are_shuffled(server: DnsServer) -> None:
    server.mx("a.test", (10, "x.a.test"), (10, "y.a.test"), (5, "best.a.test"))
    for host in ("x", "y", "best"):
        server.a(f"{host}.a.test", "127.0.0.2")
    orders = {
        tuple(h.name for h in resolver(server, seed=s).mail_hosts("a.test")) for s in range(20)
    }
    assert orders == {
        ("best.a.test", "x.a.test", "y.a.test"),
        ("best.a.test", "y.a.test", "x.a.test"),
    }


def test_no_mx_means_the_domain_itself(server: DnsServer) -> None:
    server.a("plain.test", "127.0.0.4")
    assert resolver(server).mail_hosts("plain.test") == [MailHost("plain.test", 0, ("127.0.0.4",))]
    asked = [(q.name, q.rdtype) for q in server.queries]
    assert asked[:2] == [("plain.test", "MX"), ("plain.test", "A")]


def test_a_null_mx_is_a_permanent_556(server: DnsServer) -> None:
    server.null_mx("nomail.test")
    server.a("nomail.test", "127.0.0.4")  # an address does not make it take mail
    found = failure(resolver(server), "nomail.test")
    assert (found.kind, found.permanent) == ("null-mx", True)
    assert found.reply.startswith("556 5.1.10 nomail.test accepts no mail")


def test_a_root_exchange_beside_real_ones_is_ignored(server: DnsServer) -> None:
    server.add("mixed.test", "MX", "0 .", "10 mx.mixed.test.")
    server.a("mx.mixed.test", "127.0.0.2")
    assert [h.name for h in resolver(server).mail_hosts("mixed.test")] == ["mx.mixed.test"]


def test_a_domain_that_does_not_exist_is_permanent(server: DnsServer) -> None:
    found = failure(resolver(server), "nowhere.test")
    assert (found.kind, found.permanent) == ("not-found", True)
    assert found.reply.startswith("550 5.1.2 nowhere.test: no such domain")


def test_hosts_without_an_address_are_skipped_and_none_is_permanent(server: DnsServer) -> None:
    server.mx("a.test", (10, "gone.a.test"), (20, "noaddr.a.test"), (30, "ok.a.test"))
    server.add("noaddr.a.test", "TXT", '"no address here"')
    server.a("ok.a.test", "127.0.0.2")
    assert [h.name for h in resolver(server).mail_hosts("a.test")] == ["ok.a.test"]
    server.remove("ok.a.test")
    found = failure(resolver(server), "a.test")
    assert found.permanent and found.reply.startswith("550 5.4.4 a.test: no mail host")
    server.add("empty.test", "TXT", '"nothing"')
    assert failure(resolver(server), "empty.test").reply == (
        "550 5.4.4 empty.test: no MX record and no address"
    )


def test_servfail_and_silence_are_temporary(server: DnsServer) -> None:
    server.mx("a.test", (10, "mx.a.test"))
    server.a("mx.a.test", "127.0.0.2")
    server.servfail("a.test")
    found = failure(resolver(server), "a.test")
    assert (found.kind, found.permanent) == ("temporary", False)
    assert found.reply.startswith("451 4.4.3 DNS lookup of a.test (MX) failed")
    server.drop("a.test")
    found = failure(resolver(server, timeout=0.5), "a.test")
    assert not found.permanent and "4.4.3" in found.reply
    server.answer("a.test")
    server.servfail("mx.a.test")  # the MX is there, its only host's address is not
    found = failure(resolver(server), "a.test")
    assert not found.permanent and "mx.a.test (A/AAAA)" in found.reply


def test_one_host_failing_to_resolve_leaves_the_others(server: DnsServer) -> None:
    server.mx("a.test", (10, "mx1.a.test"), (20, "mx2.a.test"))
    server.a("mx1.a.test", "127.0.0.2")
    server.a("mx2.a.test", "127.0.0.3")
    server.servfail("mx1.a.test")
    assert [h.name for h in resolver(server).mail_hosts("a.test")] == ["mx2.a.test"]


def test_a_truncated_answer_is_asked_again_over_tcp(server: DnsServer) -> None:
    server.mx("a.test", (10, "mx.a.test"))
    server.a("mx.a.test", "127.0.0.2")
    server.truncate("a.test")
    assert resolver(server).mail_hosts("a.test")[0].name == "mx.a.test"
    assert ("a.test", "MX", "tcp") in {(q.name, q.rdtype, q.transport) for q in server.queries}


def test_an_address_literal_is_its_own_host(server: DnsServer) -> None:
    r = resolver(server)
    assert r.mail_hosts("[127.0.0.9]") == [MailHost("[127.0.0.9]", 0, ("127.0.0.9",))]
    assert r.mail_hosts("[IPv6:::1]")[0].addresses == ("::1",)
    assert server.queries == [], "no DNS asked"


def test_a_malformed_domain_is_permanent(server: DnsServer) -> None:
    found = failure(resolver(server), "a..test")
    assert found.permanent and found.reply.startswith("550 5.1.2 a..test: not a valid domain")
