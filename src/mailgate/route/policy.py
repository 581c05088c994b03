"""Recipient policy at RCPT time: route the recipient, then ask its connector to verify it.

The verdict carries the SMTP reply, so receive never decides policy itself:
  250 2.1.5  routed, and the connector knows the recipient
  550 5.1.1  a postoffice address whose mailbox does not exist or is malformed
  554 5.7.1  no route serves the domain (relay denied)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailgate.postoffice.address import PostofficeAddress
from mailgate.route.router import Route, Router

Verifier = Callable[[Route], str | None]
"""Returns None when the connector accepts the recipient, else a 5xx reply."""


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    reply: str
    connector: str | None
    relay_denied: bool = False
    key: str = ""  # the recipient's identity, for dropping duplicates within one message


class RecipientPolicy:
    def __init__(self, router: Router, verifiers: Mapping[str, Verifier]) -> None:
        self.router = router
        self.verifiers = dict(verifiers)

    def check(self, address: str) -> Verdict:
        route = self.router.route(address)
        if route.connector is None:
            if route.postoffice_error is not None:
                return Verdict(False, f"550 5.1.1 <{address}>: {route.postoffice_error}", None)
            return Verdict(
                False, f"554 5.7.1 <{address}>: Relay access denied", None, relay_denied=True
            )
        verify = self.verifiers.get(route.connector)
        problem = verify(route) if verify else None
        if problem is not None:
            return Verdict(False, problem, route.connector)
        local, _, domain = address.rpartition("@")
        key = str(route.postoffice) if route.postoffice else f"{local}@{domain.lower()}"
        return Verdict(True, "250 2.1.5 Ok", route.connector, key=key)


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
