"""Parse a file dropped in a postoffice outbox into an envelope and a message.

The envelope comes from leading `X-Sender:` / `X-Receiver:` lines (as in an IIS
pickup folder; they are stripped), or else from From (sender) and To/Cc/Bcc
(recipients; Bcc lines are stripped). Addresses written `MS:NET/PO/MBX` are
mapped to their SMTP form. Line ends are normalised to CRLF; Date and
Message-ID are added when missing, as an MTA does for local submissions.
Anything that cannot make a sendable message raises PickupError with a reason
for the badmail `.reason` file. Pure and total: hostile bytes never raise
anything else.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailgate.errors import AddressError
from mailgate.postoffice.address import AddressMap
from mailgate.receive.checks import address_problem

_LINE_END = re.compile(rb"\r\n|\r|\n")
_ENVELOPE = re.compile(rb"^x-(sender|receiver)[ \t]*:[ \t]*(.*)$", re.IGNORECASE)
_BCC = re.compile(rb"^bcc[ \t]*:", re.IGNORECASE)
_MS_FORM = re.compile(r"(?:^|[\s<])(MS:[^\s<>,]+)", re.IGNORECASE)


class PickupError(ValueError):
    """The file is not a message that can be sent; the text says why."""


@dataclass(frozen=True, slots=True)
class PickupMessage:
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    message_id: str | None
    smtputf8: bool


def parse_pickup(
    data: bytes, address_map: AddressMap, *, hostname: str, unique: str
) -> PickupMessage:
    """Parse one pickup file; `unique` makes the Message-ID added to messages lacking one."""
    if b"\x00" in data:
        raise PickupError("the file contains NUL bytes")
    lines = _LINE_END.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    senders, receivers, lines = _envelope_lines(lines)
    header_end = lines.index(b"") if b"" in lines else len(lines)
    headers, rest = lines[:header_end], lines[header_end:]
    if not headers and not (senders or receivers):
        raise PickupError("the file has no header lines")
    parsed = BytesHeaderParser(policy=compat32).parsebytes(b"\r\n".join(headers) + b"\r\n\r\n")
    if receivers:
        recipients = receivers
    else:
        recipients = _addresses(parsed, "To", "Cc", "Bcc")
        headers = _strip_bcc(headers)
    if not senders:
        senders = _addresses(parsed, "From")
    if not senders:
        raise PickupError("no sender: neither an X-Sender: line nor a From: header")
    if not recipients:
        raise PickupError("no recipients: neither X-Receiver: lines nor To/Cc/Bcc headers")
    sender = _smtp_form(senders[0], address_map, "sender")
    mapped = tuple(dict.fromkeys(_smtp_form(r, address_map, "recipient") for r in recipients))
    added = []
    if parsed.get("Date") is None:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}".encode())
    message_id = parsed.get("Message-ID")
    if message_id is None:
        message_id = f"<{unique}@{hostname}>"
        added.append(f"Message-ID: {message_id}".encode())
    body = b"\r\n".join([*headers, *added, *rest]) + b"\r\n"
    smtputf8 = not all(a.isascii() for a in (sender, *mapped))
    return PickupMessage(sender, mapped, body, str(message_id).strip()[:998], smtputf8)


def _envelope_lines(lines: list[bytes]) -> tuple[list[str], list[str], list[bytes]]:
    senders: list[str] = []
    receivers: list[str] = []
    index = 0
    while index < len(lines):
        match = _ENVELOPE.match(lines[index])
        if match is None:
            break
        value = match.group(2).decode("utf-8", "replace").strip()
        ms_form = _MS_FORM.search(value)
        if ms_form:
            address = ms_form.group(1)
        else:
            address = email.utils.parseaddr(value)[1] or value.strip("<>")
        (senders if match.group(1).lower() == b"sender" else receivers).append(address)
        index += 1
    return senders, receivers, lines[index:]


def _addresses(parsed: Message, *names: str) -> list[str]:
    """Addresses in the named headers; an `MS:NET/PO/MBX` item is taken whole (its ':' is
    not RFC 5322 group syntax here)."""
    found: list[str] = []
    for name in names:
        for value in parsed.get_all(name, []):
            for item in str(value).split(","):
                ms_form = _MS_FORM.search(item)
                if ms_form:
                    found.append(ms_form.group(1))
                else:
                    found += [a for _, a in email.utils.getaddresses([item]) if a]
    return found


def _strip_bcc(headers: list[bytes]) -> list[bytes]:
    kept: list[bytes] = []
    in_bcc = False
    for line in headers:
        if line[:1] in (b" ", b"\t"):
            if not in_bcc:
                kept.append(line)
            continue
        in_bcc = bool(_BCC.match(line))
        if not in_bcc:
            kept.append(line)
    return kept


def _smtp_form(address: str, address_map: AddressMap, what: str) -> str:
    value = address.strip()
    if value[:3].upper() == "MS:":
        try:
            value = address_map.to_smtp(address_map.parse(value))
        except AddressError as exc:
            raise PickupError(f"{what} {address!r}: {exc}") from None
    problem = address_problem(value, sender=what == "sender")
    if problem:
        raise PickupError(f"{what} {address!r}: {problem[10:]}")
    return value
