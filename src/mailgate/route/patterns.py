"""Address-space patterns, as connector address spaces are written by administrators.

Forms, matched case-insensitively:
  user@example.org   exactly that address
  *@example.org      any user at that domain
  *@*.example.org    any user at any subdomain (not the domain itself)
  MS:NET/PO/MBX      a postoffice address; each part may be *
  *                  anything
A pattern that fits none of these is refused with a reason (config validation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.postoffice.address import PostofficeAddress

_PO_PART = re.compile(r"\*|[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed pattern; exactly one of its shapes is set."""

    text: str
    anything: bool = False
    address: str | None = None
    domain: str | None = None
    subdomain_of: str | None = None
    postoffice: tuple[str, str, str] | None = None

    def matches(self, address: str, po: PostofficeAddress | None) -> bool:
        """Whether `address` (and its postoffice form, if it has one) falls in this space."""
        if self.anything:
            return True
        if self.postoffice is not None:
            if po is None:
                return False
            parts = (po.net, po.po, po.mailbox)
            return all(p in ("*", q) for p, q in zip(self.postoffice, parts, strict=True))
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if self.address is not None:
            return address.lower() == self.address
        if self.domain is not None:
            return domain == self.domain
        assert self.subdomain_of is not None
        return domain.endswith("." + self.subdomain_of)


def parse_pattern(text: str) -> Pattern:
    """Parse one pattern; raise ValueError naming what is wrong."""
    value = text.strip()
    if value == "*":
        return Pattern(text, anything=True)
    if value[:3].upper() == "MS:":
        parts = value[3:].split("/")
        if len(parts) != 3 or not all(_PO_PART.fullmatch(p) for p in parts):
            raise ValueError(
                f"{text!r}: postoffice patterns look like MS:NET/PO/MBX, parts may be *"
            )
        net, po, mbx = (p.upper() for p in parts)
        return Pattern(text, postoffice=(net, po, mbx))
    local, at, domain = value.rpartition("@")
    domain = domain.lower()
    if not at or not local or not domain or " " in value:
        raise ValueError(f"{text!r}: expected 'user@domain', '*@domain', '*@*.domain', MS:... or *")
    if domain.startswith("*."):
        rest = domain[2:]
        if local != "*" or not rest or "*" in rest:
            raise ValueError(f"{text!r}: subdomain patterns look like '*@*.example.org'")
        return Pattern(text, subdomain_of=rest)
    if "*" in domain:
        raise ValueError(f"{text!r}: '*' in a domain is only allowed as a leading '*.'")
    if local == "*":
        return Pattern(text, domain=domain)
    if "*" in local:
        raise ValueError(f"{text!r}: '*' in a local part must stand alone")
    return Pattern(text, address=value.lower())
