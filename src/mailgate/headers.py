"""Small, safe views of a raw message's header block, shared by every stage.

Pure functions over bytes; none raises on hostile input.
"""

from __future__ import annotations

import re

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_RECEIVED = re.compile(rb"^Received:", re.IGNORECASE | re.MULTILINE)


def split_headers(data: bytes) -> bytes:
    """The header block of a message (with its last line end), or all of it if no body."""
    match = _HEADER_END.search(data)
    return (
        data if match is None else data[: match.start() + (2 if data[match.start()] == 13 else 1)]
    )


def received_count(data: bytes) -> int:
    """Received: headers in the header block (the loop guard's hop count)."""
    return len(_RECEIVED.findall(split_headers(data)))
