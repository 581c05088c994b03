"""The chunked DATA reader: the end is CRLF.CRLF only, wherever the chunks are cut."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.receive.body import EndOfData, too_long


def feed_all(stream: bytes, cuts: list[int], limit: int = 0) -> tuple[EndOfData, bytes | None]:
    reader = EndOfData(limit)
    points = sorted({min(max(c, 0), len(stream)) for c in cuts} | {0, len(stream)})
    for start, stop in itertools.pairwise(points):
        leftover = reader.feed(stream[start:stop])
        if leftover is not None:
            rest = stream[stop:]
            return reader, leftover + rest
    return reader, None


def stuff(body: bytes) -> bytes:
    """What a client sends for `body` (RFC 5321 4.5.2 transparency)."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


lines = st.lists(
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"x").replace(b"\n", b"y")), max_size=8
)


@settings(max_examples=400, deadline=None)
@given(lines, st.lists(st.integers(0, 600), max_size=8), st.binary(max_size=30))
def test_any_cut_finds_the_same_end(body_lines: list[bytes], cuts: list[int], after: bytes) -> None:
    body = b"".join(line + b"\r\n" for line in body_lines)
    stream = stuff(body) + b".\r\n" + after
    reader, leftover = feed_all(stream, cuts)
    assert leftover == after, "the pipelined bytes after the end are given back"
    assert bytes(reader.data) == stuff(body)


def test_smuggling_shapes_do_not_end_the_body() -> None:
    for fake in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
        reader = EndOfData(0)
        assert reader.feed(b"Subject: x\r\n\r\nbody" + fake + b"MAIL FROM:<evil@x>\r\n") is None
        assert reader.feed(b".\r\n") == b""
        assert fake in reader.data


def test_empty_body_and_limit() -> None:
    reader = EndOfData(0)
    assert reader.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n" and reader.data == b""
    big = EndOfData(10)
    assert big.feed(b"x" * 50 + b"\r\n") is None
    assert big.feed(b".\r\n") == b"" and big.too_much and big.data == b""
    cut = EndOfData(0)  # the terminator split as "\r\n." | "\r\n"
    assert cut.feed(b"a\r\n.") is None
    assert cut.feed(b"\r\nNEXT") == b"NEXT" and cut.data == b"a\r\n"


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=3000).map(lambda b: b.translate(bytes.maketrans(b"\x00\x01", b"\n\n"))),
    st.sampled_from([1, 2, 5, 10, 78, 1000]),
)
def test_the_long_line_check_agrees_with_splitting_every_line(data: bytes, limit: int) -> None:
    expected = any(len(line) + 1 > limit for line in data.split(b"\n"))
    assert too_long(bytearray(data), limit) is expected
