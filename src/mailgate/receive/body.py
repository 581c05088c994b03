"""The body of a DATA: where it ends, and whether a line of it is too long.

`EndOfData` finds CRLF.CRLF, and nothing else, across the chunks a body arrives in (a bare LF
or CR never ends a message: the raw material of SMTP smuggling); `too_long` says whether a
line exceeds [smtp] max_line_length. Pure functions of bytes; they never raise on hostile
input. Used by the session's DATA (session.py, session_fast.py) and BDAT (chunking.py).
"""

from __future__ import annotations

import functools
import re


class EndOfData:
    """Finds the end of a DATA body, CRLF.CRLF and nothing else, across chunks.

    `feed` returns None until the end is seen, then the bytes after it (the client's next,
    pipelined commands). `data` is the dot-stuffed body without the final ".CRLF"; past
    `limit` bytes (0: none) nothing more is kept and `too_much` is set.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.too_much = False
        self._tail = b"\r\n"  # the body starts after a line end: ".CRLF" at once is empty

    def feed(self, chunk: bytes) -> bytes | None:
        tail = self._tail
        window = tail + chunk
        end = window.find(b"\r\n.\r\n")
        if end == -1:
            self._keep(chunk)
            self._tail = window[-4:]
            return None
        keep = end + 2 - len(tail)  # bytes of this chunk that belong to the body
        if keep >= 0:
            self._keep(chunk[:keep])
        elif not self.too_much:
            del self.data[len(self.data) + keep :]  # the end began in the previous chunk
        return chunk[end + 5 - len(tail) :]

    def _keep(self, part: bytes) -> None:
        if self.too_much:
            return
        self.data += part
        if self.limit and len(self.data) > self.limit:
            self.too_much = True
            self.data.clear()  # read on to the end, keeping nothing


@functools.lru_cache(maxsize=8)
def _line_after_newline(limit: int) -> re.Pattern[bytes]:
    # The literal "\n" prefix lets the regex engine jump from newline to newline;
    # a bare [^\n]{N} would be tried at every offset (130 us for a 5 KB body).
    return re.compile(rb"\n[^\n]{%d}" % limit)


def too_long(data: bytes | bytearray, limit: int) -> bool:
    """Whether a line (with its LF) is longer than `limit` octets."""
    if len(data) < limit:
        return False
    if data.find(b"\n", 0, limit) < 0:
        return True  # the first line
    return _line_after_newline(limit).search(data) is not None
