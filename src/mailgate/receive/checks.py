"""Protocol checks on envelope addresses and message content, each returning an SMTP reply.

Limits are those of RFC 5321 section 4.5.3.1: local part 64 octets, domain 255,
path 256 (with the angle brackets); the domain must be valid (receive.domains).
Content is refused for bare CR or LF (the raw material of SMTP smuggling), NUL
bytes, and raw 8-bit header bytes from a client that did not declare SMTPUTF8.
All functions are pure and never raise on hostile input.
"""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailgate.headers import split_headers
from mailgate.receive.domains import domain_problem

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def address_problem(address: str, *, sender: bool) -> str | None:
    """Why an envelope address is unacceptable, as an SMTP reply; None if it is fine."""
    what = "sender" if sender else "recipient"
    code = "501 5.1.7" if sender else "501 5.1.3"
    if _CONTROL.search(address):
        return f"{code} Bad {what} address syntax: control characters"
    if len(address) + 2 > MAX_PATH:
        return f"{code} Bad {what} address syntax: path longer than {MAX_PATH} octets"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"{code} Bad {what} address syntax: expected local-part@domain"
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        return f"{code} Bad {what} address syntax: local part longer than {MAX_LOCAL_PART} octets"
    if len(domain.encode("utf-8", "surrogateescape")) > MAX_DOMAIN:
        return f"{code} Bad {what} address syntax: domain longer than {MAX_DOMAIN} octets"
    problem = domain_problem(domain)
    if problem:
        return f"{code} Bad {what} address syntax: invalid domain: {problem}"
    return None


def has_bare_newline(data: bytes) -> bool:
    """A CR or LF not part of a CRLF pair (counting is ten times faster than a regex)."""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def content_problem(
    data: bytes, *, smtputf8: bool, reject_8bit_headers: bool, max_header_size: int = 0
) -> str | None:
    """Why message content must be refused, as an SMTP reply; None if it may be queued."""
    if b"\x00" in data:
        return "554 5.6.0 Message refused: contains NUL bytes"
    if has_bare_newline(data):
        return "554 5.6.0 Message refused: bare CR or LF (lines must end with CRLF)"
    headers = split_headers(data)
    if max_header_size and len(headers) > max_header_size:
        return f"552 5.3.4 Message refused: header block larger than {max_header_size} bytes"
    if reject_8bit_headers and not smtputf8 and not headers.isascii():
        return "554 5.6.7 Message refused: 8-bit header bytes need SMTPUTF8 (RFC 6532)"
    return None


_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)


def header_message_id(data: bytes) -> str | None:
    """The Message-ID header value, if one parses; never raises."""
    headers = split_headers(data)
    match = _MESSAGE_ID.search(headers)
    if match is not None and match.group(1).isascii():  # the common case, without a parser
        text = " ".join(match.group(1).decode("ascii").split())
        return _CONTROL.sub("", text)[:998] or None
    if match is None and b"message-id" not in headers.lower():
        return None
    try:
        value = BytesHeaderParser(policy=compat32).parsebytes(headers).get("Message-ID")
    except Exception:  # hostile headers must never break receiving
        return None
    if value is None:
        return None
    text = _CONTROL.sub("", str(value)).strip()
    return text[:998] or None
