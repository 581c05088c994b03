"""connectors.resolve: a domain's mail hosts, from DNS, in the order to try them (RFC 5321 5.1).

`MailResolver.mail_hosts(domain)` asks for the domain's MX records and returns its hosts
by preference, those of equal preference shuffled (to spread load, as the RFC asks), each
with its IPv4 then IPv6 addresses; with no MX record the domain itself is the one host
(the implicit MX). An address literal ([192.0.2.1], [IPv6:2001:db8::1]) is its own host.
`LookupFailure` says why there is none: a null MX (RFC 7505, the single record "0 .") is
556 5.1.10, a domain that does not exist (NXDOMAIN) 550 5.1.2, hosts without any address
550 5.4.4, all permanent; SERVFAIL, a timeout or no server answering is 451 4.4.3,
temporary. dnspython asks the nameservers given (on their port), or those of
/etc/resolv.conf, with no search list, caching answers for their TTL.
Security: names come from accepted addresses; answers only choose where to connect
(where TLS is verified, it is against the MX name, never against an address).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

MAX_HOSTS = 10  # MX records looked at, best first


@dataclass(frozen=True, slots=True)
class DnsSettings:
    nameservers: tuple[str, ...] = ()  # empty: those of /etc/resolv.conf
    port: int = 53
    timeout: float = 10.0  # for one lookup, every server and retry included
    ipv6: bool = True  # also AAAA records (tried after the A records)


@dataclass(frozen=True, slots=True)
class MailHost:
    name: str  # the exchange, lower case, without the final dot
    preference: int
    addresses: tuple[str, ...]


class LookupFailure(Exception):
    """No host to try; `reply` is the outcome to record, `kind` names the case."""

    def __init__(self, kind: str, reply: str, *, permanent: bool) -> None:
        super().__init__(reply)
        self.kind = kind  # "null-mx", "not-found" or "temporary"
        self.reply = reply
        self.permanent = permanent


class _Temporary(Exception):
    pass


class _NoSuchName(Exception):
    pass


class MailResolver:
    """One thread's resolver; `cache` (a dnspython LRUCache, thread-safe) may be shared."""

    def __init__(
        self,
        settings: DnsSettings | None = None,
        *,
        cache: dns.resolver.LRUCache | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or DnsSettings()
        self._cache = cache
        self._rng = rng or random.Random()
        self._resolver: dns.resolver.Resolver | None = None

    def mail_hosts(self, domain: str) -> list[MailHost]:
        """The hosts to try for `domain`, best first; LookupFailure if there is none."""
        literal = _literal(domain)
        if literal is not None:
            return [MailHost(domain, 0, (literal,))]
        try:
            name = dns.name.from_text(domain)
        except (dns.exception.DNSException, UnicodeError) as exc:
            raise LookupFailure(
                "not-found", f"550 5.1.2 {domain}: not a valid domain ({exc})", permanent=True
            ) from None
        try:
            records = self._query(name, "MX")
        except _NoSuchName:
            raise LookupFailure(
                "not-found", f"550 5.1.2 {domain}: no such domain (NXDOMAIN)", permanent=True
            ) from None
        except _Temporary as exc:
            raise self._temporary(domain, "MX", exc) from None
        exchanges = self._exchanges(domain, name, records)
        return self._with_addresses(domain, exchanges, implicit=not records)

    def _exchanges(
        self, domain: str, name: dns.name.Name, records: Sequence[object]
    ) -> list[tuple[int, dns.name.Name]]:
        if not records:
            return [(0, name)]  # no MX: the domain is its own mail host (RFC 5321 5.1)
        pairs = [(int(r.preference), r.exchange) for r in records]  # type: ignore[attr-defined]
        if len(pairs) == 1 and pairs[0][1] == dns.name.root:
            raise LookupFailure(
                "null-mx",
                f"556 5.1.10 {domain} accepts no mail (null MX, RFC 7505)",
                permanent=True,
            )
        pairs = [p for p in pairs if p[1] != dns.name.root]  # "." beside others: ignored
        keyed = sorted((pref, self._rng.random(), exchange) for pref, exchange in pairs)
        return [(pref, exchange) for pref, _, exchange in keyed[:MAX_HOSTS]]

    def _with_addresses(
        self, domain: str, exchanges: list[tuple[int, dns.name.Name]], *, implicit: bool
    ) -> list[MailHost]:
        hosts, failed = [], None
        for preference, exchange in exchanges:
            try:
                addresses = self._addresses(exchange)
            except _Temporary as exc:
                failed = failed or (exchange, exc)
                continue
            if addresses:
                text = exchange.to_text(omit_final_dot=True).lower()
                hosts.append(MailHost(text, preference, addresses))
        if hosts:
            return hosts
        if failed is not None:
            raise self._temporary(failed[0].to_text(omit_final_dot=True), "A/AAAA", failed[1])
        why = "no MX record and no address" if implicit else "no mail host with an address"
        raise LookupFailure("not-found", f"550 5.4.4 {domain}: {why}", permanent=True)

    def _addresses(self, host: dns.name.Name) -> tuple[str, ...]:
        found: list[str] = []
        kinds = ("A", "AAAA") if self.settings.ipv6 else ("A",)
        temporary: _Temporary | None = None
        for kind in kinds:
            try:
                found += [r.address for r in self._query(host, kind)]  # type: ignore[attr-defined]
            except _NoSuchName:
                return tuple(found)  # the host does not exist: no other type either
            except _Temporary as exc:
                temporary = exc
        if not found and temporary is not None:
            raise temporary
        return tuple(found)

    def _query(self, name: dns.name.Name, kind: str) -> list[object]:
        """The records of `kind` for `name` ([] for none); _NoSuchName for NXDOMAIN,
        _Temporary for what may pass."""
        try:
            answer = self._get_resolver().resolve(
                name, kind, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise _NoSuchName() from None
        except dns.exception.DNSException as exc:
            raise _Temporary(str(exc) or type(exc).__name__) from None
        return list(answer.rrset) if answer.rrset is not None else []

    def _get_resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            s = self.settings
            resolver = dns.resolver.Resolver(configure=not s.nameservers)  # may raise
            if s.nameservers:
                resolver.nameservers = list(s.nameservers)
                resolver.port = s.port
            resolver.lifetime = s.timeout
            resolver.timeout = min(s.timeout, 3.0)  # per server try; retried within lifetime
            resolver.cache = self._cache
            self._resolver = resolver
        return self._resolver

    def _temporary(self, name: str, kind: str, exc: Exception) -> LookupFailure:
        return LookupFailure(
            "temporary",
            f"451 4.4.3 DNS lookup of {name} ({kind}) failed: {' '.join(str(exc).split())}",
            permanent=False,
        )


def _literal(domain: str) -> str | None:
    """The address of an address literal domain ([192.0.2.1], [IPv6:2001:db8::1]), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None
