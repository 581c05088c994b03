"""Ordered address-space rules: the first rule whose pattern matches picks the connector.

Routing sees an address and, when the address is in the postoffice domain, its
postoffice form, so rules can be written either way. Tables are immutable; a
reload builds a new Router and swaps it in whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailgate.errors import AddressError
from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.route.patterns import Pattern, parse_pattern

ROUTES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: Pattern
    connector: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where a recipient goes. `connector` is None when no rule matched."""

    address: str
    connector: str | None
    postoffice: PostofficeAddress | None
    postoffice_error: str | None
    rule: str | None


class Router:
    def __init__(self, rules: Sequence[tuple[str, str]], address_map: AddressMap) -> None:
        self.rules = tuple(Rule(parse_pattern(p), c) for p, c in rules)
        self.map = address_map
        # Every RCPT asks, mostly for a few addresses; the tables never change (a reload
        # makes a new Router), so answers are kept, a bounded number of them.
        self._known: dict[str, Route] = {}

    def route(self, address: str) -> Route:
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= ROUTES_KEPT:
                self._known.clear()  # a flood of distinct addresses: start afresh
            known = self._known[address] = self._route(address)
        return known

    def _route(self, address: str) -> Route:
        try:
            po = self.map.from_smtp(address)
        except AddressError as exc:
            # In our own domain but not a valid mailbox: no rule may take it elsewhere, or
            # "user%victim@local" would fall through to a catch-all and be relayed.
            return Route(address, None, None, str(exc), None)
        for rule in self.rules:
            if rule.pattern.matches(address, po):
                return Route(address, rule.connector, po, None, rule.pattern.text)
        return Route(address, None, po, None, None)
