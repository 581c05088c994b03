"""The loopback DNS server of tests/support/dns.py, asked by dnspython's own resolver.

What the MX connector's tests will lean on: MX, A and AAAA answers, a null MX (RFC 7505),
NXDOMAIN, NODATA, SERVFAIL and silence (a timeout) per name, switched while serving, and
TCP when UDP is truncated.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.support.dns import DnsServer, Query


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as s:
        s.mx("example.test", (10, "mx1.example.test"), (20, "mx2.example.test"))
        s.a("mx1.example.test", "127.0.0.1")
        s.aaaa("mx1.example.test", "::1")
        s.a("mx2.example.test", "127.0.0.2", "127.0.0.3")
        s.null_mx("nomail.test")
        yield s


def test_mx_records_with_their_preferences(server: DnsServer) -> None:
    answer = server.resolver().resolve("example.test", "MX")
    assert sorted((r.preference, r.exchange.to_text()) for r in answer) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert answer.response.flags & dns.flags.AA


def test_a_and_aaaa(server: DnsServer) -> None:
    resolver = server.resolver()
    assert sorted(r.address for r in resolver.resolve("mx2.example.test", "A")) == [
        "127.0.0.2",
        "127.0.0.3",
    ]
    assert [r.address for r in resolver.resolve("mx1.example.test", "AAAA")] == ["::1"]


def test_null_mx(server: DnsServer) -> None:
    (record,) = server.resolver().resolve("nomail.test", "MX")
    assert record.preference == 0 and record.exchange == dns.name.root


def test_an_unknown_name_is_nxdomain(server: DnsServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        server.resolver().resolve("nowhere.test", "MX")


def test_a_known_name_without_the_type_is_nodata(server: DnsServer) -> None:
    with pytest.raises(dns.resolver.NoAnswer):
        server.resolver().resolve("mx2.example.test", "AAAA")


def test_nxdomain_on_demand_for_a_held_name(server: DnsServer) -> None:
    server.nxdomain("example.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        server.resolver().resolve("example.test", "MX")
    server.answer("example.test")
    assert len(server.resolver().resolve("example.test", "MX")) == 2


def test_servfail(server: DnsServer) -> None:
    server.servfail("example.test")
    with pytest.raises(dns.resolver.NoNameservers) as caught:
        server.resolver().resolve("example.test", "MX")
    assert "SERVFAIL" in str(caught.value)
    reply = dns.query.udp(
        dns.message.make_query("example.test", "MX"), "127.0.0.1", port=server.port, timeout=2
    )
    assert reply.rcode() == dns.rcode.SERVFAIL


def test_a_dropped_query_times_out(server: DnsServer) -> None:
    server.drop("example.test")
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        server.resolver(lifetime=0.5).resolve("example.test", "MX")
    assert 0.4 < time.monotonic() - started < 3
    assert Query("example.test", "MX", "udp") in server.queries, "it was asked, not unreachable"
    # Other names still answer while one is silent.
    assert len(server.resolver().resolve("mx2.example.test", "A")) == 2


def test_truncated_over_udp_the_resolver_retries_over_tcp(server: DnsServer) -> None:
    server.truncate("example.test")
    assert len(server.resolver().resolve("example.test", "MX")) == 2
    asked = [q.transport for q in server.queries if q.name == "example.test"]
    assert asked == ["udp", "tcp"]


def test_an_answer_too_big_for_udp_is_truncated_then_whole_over_tcp(server: DnsServer) -> None:
    server.a("many.test", *(f"10.0.{i // 250}.{i % 250}" for i in range(100)))
    reply = dns.query.udp(
        dns.message.make_query("many.test", "A", use_edns=False), "127.0.0.1", port=server.port
    )
    assert reply.flags & dns.flags.TC and not reply.answer
    assert len(server.resolver().resolve("many.test", "A")) == 100


def test_a_cname_is_followed_within_the_table(server: DnsServer) -> None:
    server.add("alias.test", "CNAME", "mx1.example.test.")
    answer = server.resolver().resolve("alias.test", "A")
    assert [r.address for r in answer] == ["127.0.0.1"]
    assert answer.canonical_name.to_text() == "mx1.example.test."


def test_names_are_case_insensitive(server: DnsServer) -> None:
    assert len(server.resolver().resolve("EXAMPLE.Test", "MX")) == 2


def test_garbage_is_ignored_and_the_server_keeps_serving(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", ("127.0.0.1", server.port))
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(b"\x00\x05abcde")
    assert len(server.resolver().resolve("example.test", "MX")) == 2
