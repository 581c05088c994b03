"""Address-space patterns, first-match routing, and the RCPT-time recipient policy."""

from __future__ import annotations

import pytest

from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.route.patterns import parse_pattern
from mailgate.route.policy import RecipientPolicy, postoffice_verifier
from mailgate.route.router import Router

MAP = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 10)


@pytest.mark.parametrize(
    ("pattern", "address", "matches"),
    [
        ("*", "anyone@anywhere.org", True),
        ("bob@example.org", "BOB@Example.ORG", True),
        ("bob@example.org", "bob2@example.org", False),
        ("*@example.org", "x@example.org", True),
        ("*@example.org", "x@example.org.", True),
        ("*@example.org", "x@sub.example.org", False),
        ("*@example.org", "x@evil-example.org", False),
        ("*@*.example.org", "x@sub.example.org", True),
        ("*@*.example.org", "x@example.org", False),
        ("*@*.example.org", "x@evilexample.org", False),
        ("MS:*/*/*", "alice@main.local.example.test", True),
        ("MS:LOCAL/*/*", "alice@main.local.example.test", True),
        ("MS:OTHER/*/*", "alice@main.local.example.test", False),
        ("MS:*/*/*", "alice@example.org", False),
    ],
)
def test_patterns(pattern: str, address: str, matches: bool) -> None:
    po = MAP.from_smtp(address)
    assert parse_pattern(pattern).matches(address, po) is matches


@pytest.mark.parametrize("bad", ["", "@x", "x@", "a*@x.org", "*@x*.org", "MS:A/B", "MS:A/B/C/D"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)


def test_first_match_wins() -> None:
    router = Router([("MS:LOCAL/*/*", "postoffice"), ("*", "elsewhere")], MAP)
    assert router.route("alice@main.local.example.test").connector == "postoffice"
    assert router.route("x@example.org").connector == "elsewhere"
    assert Router([], MAP).route("x@example.org").connector is None


def test_policy_replies() -> None:
    existing = {PostofficeAddress("LOCAL", "MAIN", "ALICE")}
    policy = RecipientPolicy(
        Router([("MS:*/*/*", "postoffice")], MAP),
        {"postoffice": postoffice_verifier(existing.__contains__)},
    )
    assert policy.check("alice@main.local.example.test").reply.startswith("250 2.1.5")
    unknown = policy.check("carol@main.local.example.test")
    assert not unknown.accepted and unknown.reply.startswith("550 5.1.1")
    relay = policy.check("victim@elsewhere.org")
    assert relay.relay_denied and relay.reply.startswith("554 5.7.1")
    malformed = policy.check("../etc@main.local.example.test")
    assert not malformed.accepted and malformed.reply.startswith("550 5.1.1")
    assert not malformed.relay_denied
