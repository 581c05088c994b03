"""Pickup file parsing: envelopes from X-Sender/X-Receiver or headers, MS: forms, bad files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.postoffice.address import AddressMap
from mailgate.receive.pickup_parse import PickupError, parse_pickup

MAP = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 10)


def parse(data: bytes):  # type: ignore[no-untyped-def]
    return parse_pickup(data, MAP, hostname="mx.test", unique="U1")


def test_envelope_lines_are_used_and_stripped() -> None:
    msg = parse(
        b"x-sender: MS:LOCAL/MAIN/ALICE\r\nX-Receiver: <bob@example.org>\r\n"
        b"X-Receiver: MS:LOCAL/MAIN/CAROL\r\nSubject: hi\r\nTo: someone-else@x.org\r\n\r\nbody\r\n"
    )
    assert msg.sender == "alice@main.local.example.test"
    assert msg.recipients == ("bob@example.org", "carol@main.local.example.test")
    assert b"x-sender" not in msg.body.lower() and msg.body.endswith(b"\r\n\r\nbody\r\n")


def test_headers_give_the_envelope_and_bcc_is_stripped() -> None:
    msg = parse(
        b"From: Alice <MS:LOCAL/MAIN/ALICE>\nTo: a@x.org, MS:LOCAL/MAIN/BOB\nCc: c@x.org\n"
        b"Bcc: hidden@x.org,\n  also-hidden@x.org\nSubject: s\nMessage-ID: <m1@app>\n\nbody\n"
    )
    assert msg.sender == "alice@main.local.example.test"
    assert msg.recipients == (
        "a@x.org", "bob@main.local.example.test", "c@x.org", "hidden@x.org", "also-hidden@x.org",
    )  # fmt: skip
    assert b"hidden" not in msg.body and b"Bcc" not in msg.body
    assert msg.message_id == "<m1@app>" and b"\r\n" in msg.body and b"\n\n" not in msg.body


def test_missing_date_and_message_id_are_added() -> None:
    msg = parse(b"From: a@x.org\nTo: b@x.org\n\nbody\n")
    assert b"Message-ID: <U1@mx.test>" in msg.body and b"\r\nDate: " in msg.body
    assert msg.message_id == "<U1@mx.test>"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no header"),
        (b"just some text\n", "no sender"),
        (b"From: a@x.org\nSubject: s\n\nx\n", "no recipients"),
        (b"To: b@x.org\n\nx\n", "no sender"),
        (b"From: a@x.org\nTo: b@x.org\n\nx\x00y\n", "NUL"),
        (b"X-Sender: MS:../../ETC\nX-Receiver: b@x.org\n\nx\n", "sender"),
        (b"X-Sender: a@x.org\nX-Receiver: " + b"l" * 70 + b"@x.org\n\nx\n", "recipient"),
    ],
)
def test_bad_files_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PickupError, match=reason):
        parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_pickup_error(data: bytes) -> None:
    try:
        msg = parse(data)
    except PickupError:
        return
    assert msg.recipients and msg.sender
    assert b"\x00" not in msg.body


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"From: a@x.org", b"To: b@x.org", b"X-Sender: s@x.org", b"X-Receiver: r@x.org",
             b"Bcc: h@x.org", b" folded", b"Subject: \xff\xfe", b"", b"To: MS:A/B/C", b"\r"]
        ),
        max_size=12,
    )
)  # fmt: skip
def test_header_soup_parses_or_is_refused(lines: list[bytes]) -> None:
    try:
        msg = parse(b"\n".join(lines))
    except PickupError:
        return
    assert all("@" in r for r in msg.recipients)
