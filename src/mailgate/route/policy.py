"""Recipient policy at RCPT time: route the recipient, check relaying, ask its connector.

The verdict carries the SMTP reply, so receive never decides policy itself:
  250 2.1.5  routed, allowed, and the connector knows the recipient
  550 5.1.1  a postoffice address whose mailbox does not exist or is malformed
  554 5.7.1  no route serves the domain, or it is relayed off this host and the
             client is neither in relay_networks nor authenticated (no open relay)
Local submissions (pickup files, client None) may relay: they come from the host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mailgate.postoffice.address import PostofficeAddress
from mailgate.route.router import Route, Router

Verifier = Callable[[Route], str | None]
"""Returns None when the connector accepts the recipient, else a 5xx reply."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    reply: str
    connector: str | None
    relay_denied: bool = False
    key: str = ""  # the recipient's identity, for dropping duplicates within one message


def relay_allowed(client_ip: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


@dataclass(frozen=True, slots=True)
class _Tables:
    router: Router
    relay_networks: tuple[Network, ...]


class RecipientPolicy:
    """Routing plus relay control. `replace` swaps the tables in one step (a reload):
    a check in progress sees either the old tables or the new ones, never a mix."""

    def __init__(
        self,
        router: Router,
        verifiers: Mapping[str, Verifier],
        *,
        relay_connectors: Iterable[str] = (),
        relay_networks: Iterable[str] = (),
    ) -> None:
        self.verifiers = dict(verifiers)
        self.relay_connectors = frozenset(relay_connectors)
        self._tables = _Tables(router, _networks(relay_networks))

    @property
    def router(self) -> Router:
        return self._tables.router

    def replace(self, router: Router, relay_networks: Iterable[str]) -> None:
        self._tables = _Tables(router, _networks(relay_networks))

    def route(self, address: str) -> Route:
        return self._tables.router.route(address)

    def trusted_client(self, client_ip: str) -> bool:
        """The client is in relay_networks (the tables of the last reload)."""
        return relay_allowed(client_ip, self._tables.relay_networks)

    def check(
        self, address: str, client_ip: str | None = None, *, authenticated: bool = False
    ) -> Verdict:
        tables = self._tables
        route = tables.router.route(address)
        if route.connector is None:
            if route.postoffice_error is not None:
                return Verdict(False, f"550 5.1.1 <{address}>: {route.postoffice_error}", None)
            return _relay_denied(address)
        if (
            route.connector in self.relay_connectors
            and client_ip is not None
            and not authenticated
            and not relay_allowed(client_ip, tables.relay_networks)
        ):
            return _relay_denied(address)
        verify = self.verifiers.get(route.connector)
        problem = verify(route) if verify else None
        if problem is not None:
            return Verdict(False, problem, route.connector)
        local, _, domain = address.rpartition("@")
        key = str(route.postoffice) if route.postoffice else f"{local}@{domain.lower()}"
        return Verdict(True, "250 2.1.5 Ok", route.connector, key=key)


def _networks(networks: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _relay_denied(address: str) -> Verdict:
    return Verdict(False, f"554 5.7.1 <{address}>: Relay access denied", None, relay_denied=True)


def postoffice_verifier(exists: Callable[[PostofficeAddress], bool]) -> Verifier:
    """Accept a recipient only if it is a postoffice address whose mailbox exists."""

    def verify(route: Route) -> str | None:
        if route.postoffice is None:
            why = route.postoffice_error or "not a postoffice address"
            return f"550 5.1.1 <{route.address}>: {why}"
        if not exists(route.postoffice):
            return f"550 5.1.1 <{route.address}>: no mailbox {route.postoffice} here"
        return None

    return verify
