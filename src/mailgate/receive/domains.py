"""Syntax of the domain of an envelope address (RFC 5321 4.1.2/4.1.3, RFC 6531, RFC 5890).

A domain is dot-separated labels of letters, digits and inner hyphens (LDH, 63 octets at
most); a label "xn--..." must be an A-label that decodes as IDNA and encodes back to itself;
a non-ASCII label (a U-label, legal only under SMTPUTF8, which the caller checks) must
encode to such an A-label. Or an address literal: [IPv4] or [IPv6:...]; general literals
have no registered tag and are refused. IDNA is Python's codec (IDNA 2003, RFC 3490): it
tells malformed labels from valid ones without refusing names the wider world still uses.
Pure; never raises on hostile input (text decoded with surrogateescape included).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from encodings import idna

_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_ACE = "xn--"


@functools.lru_cache(maxsize=4096)  # asked at every MAIL and RCPT, mostly for a few domains
def domain_problem(domain: str) -> str | None:
    """Why `domain` is not a valid domain or address literal, as a phrase; None if it is."""
    if domain.startswith("["):
        return _literal_problem(domain)
    for label in domain.split("."):
        problem = _label_problem(label)
        if problem:
            return problem
    return None


def _label_problem(label: str) -> str | None:
    if not label:
        return "empty domain label"
    if not label.isascii():
        return _u_label_problem(label)
    if not _LDH.match(label):
        return "domain label not letters, digits and inner hyphens (RFC 5321)"
    if label[:4].lower() == _ACE and _a_label_problem(label.lower()):
        return "domain label starts with xn-- but is no valid IDNA A-label"
    return None


def _a_label_problem(label: str) -> bool:
    try:
        unicode = idna.ToUnicode(label)  # checks that it encodes back to `label`
    except (UnicodeError, ValueError):
        return True
    return unicode.isascii() or unicode.startswith("-") or unicode.endswith("-")


def _u_label_problem(label: str) -> str | None:
    bad = "domain label is no valid internationalized (IDNA) label"
    if label.startswith("-") or label.endswith("-"):
        return bad
    try:
        ace = idna.ToASCII(label).decode("ascii")
    except (UnicodeError, ValueError):
        return bad
    # Mapped to plain ASCII (full-width letters, invisible characters) is a look-alike.
    if not ace.startswith(_ACE) or not _LDH.match(ace):
        return bad
    return None


def _literal_problem(literal: str) -> str | None:
    if not literal.endswith("]"):
        return "address literal without closing bracket"
    inner = literal[1:-1]
    tag, colon, rest = inner.partition(":")
    try:
        if not colon:
            ipaddress.IPv4Address(inner)
        elif tag.lower() == "ipv6" and "%" not in rest:
            ipaddress.IPv6Address(rest)
        else:
            return "address literal neither [IPv4] nor [IPv6:...] (RFC 5321 4.1.3)"
    except ValueError:
        return "address literal is no valid IP address"
    return None
