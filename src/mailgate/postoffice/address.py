"""Postoffice addresses and their mapping to and from SMTP.

A postoffice address names NETWORK/POSTOFFICE/MAILBOX; administrators write it as
`MS:NET/PO/MBX`. Its SMTP form comes from a template, by default
`{mailbox}@{po}.{net}.{domain}`. Each part is validated here, once, against a
strict alphabet (A-Z, 0-9, '_', '-') and a length limit, so that no part can ever
name a path outside the postoffice root: '..', '/', NUL and the like never pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from mailgate.errors import AddressError

_NAME = re.compile(r"[A-Z0-9_-]+")


@dataclass(frozen=True, slots=True, order=True)
class PostofficeAddress:
    """A validated postoffice address; parts are upper case."""

    net: str
    po: str
    mailbox: str

    def __str__(self) -> str:
        return f"MS:{self.net}/{self.po}/{self.mailbox}"

    @property
    def relpath(self) -> PurePosixPath:
        return PurePosixPath(self.net, self.po, self.mailbox)


def validate_name(kind: str, value: str, max_length: int) -> str:
    """Return `value` upper-cased if it is a safe postoffice name, else raise AddressError."""
    if not value.isascii():  # "al\u0131ce".upper() == "ALICE": look-alikes must not alias
        raise AddressError(f"{kind} name {value!r} may hold only ASCII letters, digits, '_', '-'")
    name = value.upper()
    if not name:
        raise AddressError(f"{kind} name is empty")
    if len(name) > max_length:
        raise AddressError(f"{kind} name {value!r} is longer than {max_length} characters")
    if not _NAME.fullmatch(name):
        raise AddressError(f"{kind} name {value!r} may hold only letters, digits, '_' and '-'")
    return name


class AddressMap:
    """Maps between SMTP addresses and postoffice addresses for one domain and template."""

    def __init__(self, domain: str, template: str, max_name_length: int) -> None:
        self.domain = domain.lower()
        self.template = template
        self.max_name_length = max_name_length
        local_t, _, domain_t = template.partition("@")
        self._local = self._compile(local_t)
        self._domain = self._compile(domain_t)

    def _compile(self, template: str) -> re.Pattern[str]:
        pattern = ""
        for literal, field in re.findall(r"([^{]*)(\{\w+\})?", template):
            pattern += re.escape(literal)
            if field == "{domain}":
                pattern += re.escape(self.domain)
            elif field:
                pattern += f"(?P<{field[1:-1]}>[^@.]+)"
        return re.compile(pattern, re.IGNORECASE | re.ASCII)  # no Unicode case folding

    def to_smtp(self, address: PostofficeAddress) -> str:
        return self.template.format(
            mailbox=address.mailbox.lower(),
            po=address.po.lower(),
            net=address.net.lower(),
            domain=self.domain,
        )

    def make(self, net: str, po: str, mailbox: str) -> PostofficeAddress:
        limit = self.max_name_length
        return PostofficeAddress(
            validate_name("network", net, limit),
            validate_name("postoffice", po, limit),
            validate_name("mailbox", mailbox, limit),
        )

    def serves_domain(self, address: str) -> bool:
        """Whether the domain of an SMTP address has the postoffice shape."""
        _, _, domain = address.rpartition("@")
        return self._domain.fullmatch(domain.rstrip(".")) is not None

    def from_smtp(self, address: str) -> PostofficeAddress | None:
        """The postoffice address of an SMTP address; None if its domain is not ours.

        An address in our domain whose names are not valid raises AddressError.
        """
        local, at, domain = address.rpartition("@")
        domain_match = self._domain.fullmatch(domain.rstrip("."))
        if not at or domain_match is None:
            return None
        local_match = self._local.fullmatch(local)
        if local_match is None:
            raise AddressError(f"{address!r} is not a postoffice address")
        parts = {**domain_match.groupdict(), **local_match.groupdict()}
        return self.make(parts["net"], parts["po"], parts["mailbox"])

    def parse(self, text: str) -> PostofficeAddress:
        """Parse what an administrator typed: `MS:NET/PO/MBX` or the SMTP form."""
        value = text.strip()
        if value[:3].upper() == "MS:":
            parts = value[3:].split("/")
            if len(parts) != 3:
                raise AddressError(f"{text!r}: expected MS:NETWORK/POSTOFFICE/MAILBOX")
            return self.make(*parts)
        if "@" in value:
            found = self.from_smtp(value)
            if found is None:
                raise AddressError(
                    f"{text!r} is not in the postoffice domain {self.domain!r} "
                    f"(template {self.template!r})"
                )
            return found
        raise AddressError(f"{text!r}: expected MS:NET/PO/MBX or an SMTP address")
