"""Postoffice address mapping and validation: nothing can name a path outside the root."""

from __future__ import annotations

import pytest

from mailgate.errors import AddressError
from mailgate.postoffice.address import AddressMap, PostofficeAddress

MAP = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 10)


def test_both_forms_parse_to_the_same_address() -> None:
    expected = PostofficeAddress("LOCAL", "MAIN", "ALICE")
    assert MAP.parse("MS:LOCAL/MAIN/ALICE") == expected
    assert MAP.parse("ms:local/main/alice") == expected
    assert MAP.parse("Alice@Main.Local.Example.Test") == expected
    assert MAP.to_smtp(expected) == "alice@main.local.example.test"
    assert str(expected) == "MS:LOCAL/MAIN/ALICE"


def test_foreign_domains_are_not_postoffice_addresses() -> None:
    assert MAP.from_smtp("alice@example.org") is None
    assert MAP.from_smtp("alice@main.local.example.test.evil.org") is None
    assert MAP.from_smtp("alice@evil-example.test") is None
    assert MAP.from_smtp("alice@local.example.test") is None  # one label short


@pytest.mark.parametrize(
    "text",
    [
        "MS:../MAIN/ALICE", "MS:LOCAL/../ALICE", "MS:LOCAL/MAIN/..", "MS:LOCAL/MAIN/A/B",
        "MS:/etc/passwd", "MS:LOCAL/MAIN/AL\x00ICE", "MS:LOCAL/MAIN/", "MS:LOCAL/MAIN/ALICEALICEX",
        "MS:LOCAL/MAIN/AL ICE", "MS:LOCAL/MAIN/.hidden", "../x@main.local.example.test",
        "al.ice@main.local.example.test", "a%b@main.local.example.test", "MS:LOCAL/MAIN",
        "/etc/passwd", "alice",
    ],
)  # fmt: skip
def test_unsafe_or_malformed_names_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        MAP.parse(text)


def test_name_length_limit_is_configurable() -> None:
    wide = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 20)
    assert wide.parse("MS:LOCAL/MAIN/ALICEALICEX").mailbox == "ALICEALICEX"


def test_custom_template() -> None:
    other = AddressMap("corp.test", "{net}-{po}-{mailbox}@{domain}", 10)
    address = other.parse("MS:N1/P1/BOB")
    assert other.to_smtp(address) == "n1-p1-bob@corp.test"
    assert other.from_smtp("n1-p1-bob@corp.test") == address
    with pytest.raises(AddressError):
        other.from_smtp("bob@corp.test")
