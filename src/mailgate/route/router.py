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

    def route(self, address: str) -> Route:
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
