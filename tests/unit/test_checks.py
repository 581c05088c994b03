"""Receive-side checks: bare newlines, content refusals, address limits, Message-ID."""

from __future__ import annotations

import pytest

from mailgate.receive.checks import (
    address_problem,
    content_problem,
    has_bare_newline,
    header_message_id,
)


@pytest.mark.parametrize(
    ("data", "bare"),
    [(b"a\r\nb\r\n", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"\r\n\r\n", False),
     (b"a\r\r\n", True), (b"", False)],
)  # fmt: skip
def test_bare_newlines(data: bytes, bare: bool) -> None:
    assert has_bare_newline(data) is bare


def test_content_refusals() -> None:
    ok = b"Subject: x\r\n\r\nbody\r\n"
    assert content_problem(ok, smtputf8=False, reject_8bit_headers=True) is None
    nul = content_problem(b"S: x\r\n\r\na\x00b\r\n", smtputf8=False, reject_8bit_headers=True)
    assert nul and nul.startswith("554 5.6.0")
    eight = b"Subject: \xc3\xa9\r\n\r\nbody\r\n"
    assert content_problem(eight, smtputf8=False, reject_8bit_headers=True).startswith("554 5.6.7")  # type: ignore[union-attr]
    assert content_problem(eight, smtputf8=True, reject_8bit_headers=True) is None
    big = b"X: " + b"y" * 300 + b"\r\n" + b"\r\nbody\r\n"
    assert content_problem(big, smtputf8=False, reject_8bit_headers=True, max_header_size=100)
    assert (
        content_problem(b"\r\n\r\n" + b"\xff" * 10, smtputf8=False, reject_8bit_headers=True)
        is None
    )


def test_address_limits() -> None:
    assert address_problem("a@b.example", sender=False) is None
    assert address_problem("a" * 65 + "@b", sender=False).startswith("501 5.1.3")  # type: ignore[union-attr]
    assert address_problem("a@" + "b" * 256, sender=True).startswith("501 5.1.7")  # type: ignore[union-attr]
    assert address_problem("a\r\nX-Injected: y@b", sender=False) is not None
    assert address_problem("no-at-sign", sender=False) is not None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", "<a@b>"),
        (b"Message-Id:\r\n <folded@x>\r\nX: y\r\n\r\n", "<folded@x>"),
        (b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", None),
        (b"MESSAGE-ID: <upper@x>\r\n\r\n", "<upper@x>"),
        (b"Message-ID: <a\x01b@x>\r\n\r\n", "<ab@x>"),
        (b"", None),
    ],
)
def test_message_id(data: bytes, expected: str | None) -> None:
    assert header_message_id(data) == expected


BAD_DOMAINS = [
    "xn---", "xn--", "XN---", "xn--a", "xn--abc-", "xn--bcher-kva-", "-lead.example",
    "trail-.example", "foo_bar.example", "a..b", "example.", ".example", "a" * 64 + ".example",
    "sp ace.example", "[300.1.1.1]", "[1.2.3]", "[IPv6:zz::1]", "[IPv6:fe80::1%eth0]",
    "[tag:anything]", "[192.0.2.1", "bü_cher.example", "-bücher.example", "\udcff.example",
    "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org",  # full-width look-alike of example.org
]  # fmt: skip
GOOD_DOMAINS = [
    "example.org", "EXAMPLE.ORG", "a.b-c.d1", "1.2.3.4", "x" * 63 + ".example",
    "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE", "[192.0.2.1]", "[IPv6:2001:db8::1]",
    "[ipv6:::ffff:192.0.2.1]", "bücher.example", "Bücher.example", "münchen.de", "пример.рф",
]  # fmt: skip


@pytest.mark.parametrize("domain", BAD_DOMAINS)
def test_invalid_domain_syntax_refused(domain: str) -> None:
    sender = address_problem(f"a@{domain}", sender=True)
    assert sender is not None and sender.startswith("501 5.1.7 "), (domain, sender)
    recipient = address_problem(f"a@{domain}", sender=False)
    assert recipient is not None and recipient.startswith("501 5.1.3 "), (domain, recipient)


@pytest.mark.parametrize("domain", GOOD_DOMAINS)
def test_valid_domains_and_idns_accepted(domain: str) -> None:
    assert address_problem(f"a@{domain}", sender=True) is None
    assert address_problem(f"a@{domain}", sender=False) is None
