"""Long lines broken for SMTP/LMTP peers the way Postfix's smtp_line_length_limit does."""

from __future__ import annotations

import pytest

from mailgate.connectors.lines import break_long_lines


def lines(body: bytes) -> list[bytes]:
    return body.split(b"\r\n")


def test_short_lines_are_left_alone() -> None:
    body = b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n" + b"b" * 998 + b"\r\n"
    assert break_long_lines(body) is body  # the same object: nothing copied


@pytest.mark.parametrize("length", [999, 1995, 1996, 5000, 100_000])
def test_long_line_becomes_998_then_space_and_997(length: int) -> None:
    line = bytes(range(33, 127)) * (length // 94) + b"x" * (length % 94)
    body = b"Subject: x\r\n\r\nbefore\r\n" + line + b"\r\nafter\r\n"
    broken = break_long_lines(body)
    pieces = lines(broken)[3:-2]
    assert lines(broken)[:3] == [b"Subject: x", b"", b"before"]
    assert lines(broken)[-2:] == [b"after", b""]
    assert len(pieces[0]) == 998
    assert all(p.startswith(b" ") and len(p) <= 998 for p in pieces[1:])
    assert all(len(p) == 998 for p in pieces[:-1]), "every piece but the last is full"
    assert b"".join(p.removeprefix(b" ") for p in pieces[1:]) == line[998:]
    assert pieces[0] + b"".join(p[1:] for p in pieces[1:]) == line


def test_a_line_of_exactly_the_limit_gets_no_empty_continuation() -> None:
    line = b"y" * (998 + 997)
    assert lines(break_long_lines(line + b"\r\n")) == [b"y" * 998, b" " + b"y" * 997, b""]


def test_headers_and_a_last_line_without_crlf() -> None:
    header = b"References: " + b"<a@b> " * 300
    broken = break_long_lines(header + b"\r\n\r\nbody " + b"z" * 2000)
    assert all(len(line) <= 998 for line in lines(broken))
    assert broken.startswith(header[:998] + b"\r\n ")  # a folded header: still one header
    assert broken.endswith(b"z" * 10)


def test_a_break_never_splits_a_utf8_sequence() -> None:
    line = b"a" + "é€𝄞".encode() * 400  # 1-, 2-, 3- and 4-octet sequences
    pieces = lines(break_long_lines(line + b"\r\n"))[:-1]
    assert len(pieces) > 1
    for piece in pieces:
        piece.decode("utf-8")  # every piece is whole UTF-8
        assert len(piece) <= 998
    assert pieces[0] + b"".join(p[1:] for p in pieces[1:]) == line


def test_other_8bit_data_is_cut_at_the_limit() -> None:
    line = b"\x80" * 3000  # not UTF-8: no sequence to respect
    assert [len(p) for p in lines(break_long_lines(line))] == [998, 998, 998, 9]
