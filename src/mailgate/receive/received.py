"""The Received: trace header added to every accepted message (RFC 5321 section 4.4)."""

from __future__ import annotations

import email.utils
import re

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_last_stamp: tuple[int, str] = (-1, "")


def _date(when: float) -> str:
    """RFC 5322 local date of `when`; formatted once per second (it has no finer part)."""
    global _last_stamp
    second, stamp = _last_stamp
    if int(when) != second:
        stamp = email.utils.formatdate(int(when), localtime=True)
        _last_stamp = (int(when), stamp)
    return stamp


def _token(text: str) -> str:
    """A HELO name or address made safe for a header: no spaces, controls or 8-bit."""
    cleaned = _UNSAFE.sub("?", text)
    return cleaned[:255] or "unknown"


def received_header(
    *,
    helo: str | None,
    peer_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    when: float,
) -> bytes:
    """`Received: from HELO ([IP]) by HOST (mailgate) with PROTO id QID [for <RCPT>]; DATE`."""
    parts = [
        f"Received: from {_token(helo or 'unknown')} ([{_token(peer_ip)}])",
        f"\tby {hostname} (mailgate) with {protocol} id {queue_id}",
    ]
    stamp = _date(when)
    if recipient is not None:
        parts.append(f"\tfor <{_token(recipient)}>; {stamp}")
    else:
        parts[-1] += ";"
        parts.append(f"\t{stamp}")
    return ("\r\n".join(parts) + "\r\n").encode("ascii")
