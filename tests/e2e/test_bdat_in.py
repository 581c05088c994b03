"""BDAT (RFC 3030 CHUNKING) into a real `mailgate run`, over raw sockets: one chunk, several,
`BDAT 0 LAST`, pipelined with MAIL and RCPT, too big (552), out of order (503), a bad
argument (501), RSET, a client gone mid-chunk; and what arrives in the Maildir is
byte-identical to what was sent (no dot-unstuffing). A chunk is counted octets: nothing
inside one is ever taken for a command, whatever the reply to its BDAT.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mailgate.security.certs import generate
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.segments import Client

TIMEOUT = 10.0
ALICE = "alice@po1.net1.example.test"
LIMIT = 100 * 1024
ENVELOPE = f"MAIL FROM:<s@client.test>\r\nRCPT TO:<{ALICE}>\r\n".encode()
# Lines a DATA reader would unstuff, or take for the end of data and then commands.
BODY = (
    b"Subject: chunked\r\nMessage-ID: <chunked@client.test>\r\n\r\n"
    b"..two dots stay two\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<x@y.z>\r\n"
    b"DATA\r\nnot a command\r\n.\r\nlast line\r\n"
)


@pytest.fixture(scope="module")
def mg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailgate]:
    root = tmp_path_factory.mktemp("bdat")
    config = DEFAULT_CONFIG + f"\n[smtp]\nmax_message_size = {LIMIT}\n"
    service = Mailgate(root, config=config)
    service.add_mailbox("MS:NET1/PO1/ALICE")
    service.start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def client(mg: Mailgate) -> Iterator[Client]:
    c = Client(mg.port)
    c.exchange(b"EHLO client.test\r\n", 1)
    try:
        yield c
    finally:
        c.close()


def bdat(data: bytes, *, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def codes(replies: list[bytes]) -> list[bytes]:
    return [r[:9] for r in replies]  # "250 2.0.0"


def stored(mg: Mailgate, subject: bytes) -> bytes:
    """The Maildir copy of the message with this Subject line (polled for)."""

    def found() -> bytes | None:
        for path in mg.delivered("NET1", "PO1", "ALICE"):
            content = path.read_bytes()
            if b"\nSubject: " + subject + b"\n" in content:
                return content
        return None

    return wait_for(found, TIMEOUT, what=f"the message {subject!r} in ALICE")  # type: ignore[no-any-return]


def as_stored(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n")  # a Maildir's line ends


def test_ehlo_offers_chunking(client: Client) -> None:
    [ehlo], _ = client.exchange(b"EHLO client.test\r\n", 1)
    assert b"250-CHUNKING\r\n" in ehlo


def test_one_chunk_last_arrives_byte_identical(mg: Mailgate, client: Client) -> None:
    body = BODY.replace(b"chunked", b"one chunk")
    replies, _ = client.exchange(ENVELOPE + bdat(body, last=True), 3)
    assert codes(replies) == [b"250 2.1.0", b"250 2.1.5", b"250 2.0.0"], replies
    assert b"queued as" in replies[2]
    assert stored(mg, b"one chunk").endswith(b"\n" + as_stored(body))


def test_several_chunks_then_bdat_0_last_are_one_message(mg: Mailgate, client: Client) -> None:
    body = BODY.replace(b"chunked", b"several chunks") + b"x" * 5000 + b"\r\n"
    cut = body.index(b"\r\n.\r\n") + 3  # inside a CRLF.CRLF, which ends nothing here
    pieces = [body[:7], body[7:cut], body[cut:]]
    replies, _ = client.exchange(ENVELOPE, 2)
    assert codes(replies) == [b"250 2.1.0", b"250 2.1.5"], replies
    for piece in pieces:
        [reply], _ = client.exchange(bdat(piece), 1)
        assert reply == b"250 2.0.0 %d octets received\r\n" % len(piece)
    [end], _ = client.exchange(bdat(b"", last=True), 1)
    assert end.startswith(b"250 2.0.0 Ok: queued as"), end
    assert stored(mg, b"several chunks").endswith(b"\n" + as_stored(body))


def test_pipelined_transaction_in_one_write(mg: Mailgate, client: Client) -> None:
    body = BODY.replace(b"chunked", b"pipelined")
    half = len(body) // 2
    write = ENVELOPE + bdat(body[:half]) + bdat(body[half:], last=True) + b"NOOP\r\n"
    replies, _ = client.exchange(write, 5)
    assert codes(replies) == [b"250 2.1.0", b"250 2.1.5", *[b"250 2.0.0"] * 3], replies
    assert b"octets received" in replies[2] and b"queued as" in replies[3]
    assert stored(mg, b"pipelined").endswith(b"\n" + as_stored(body))


def test_too_big_is_read_to_its_end_refused_552_and_the_transaction_reset(
    mg: Mailgate, client: Client
) -> None:
    big = b"Subject: too big\r\n\r\n" + b"z" * 998 + b"\r\n"
    big *= LIMIT // len(big) + 1
    write = ENVELOPE + bdat(big[: LIMIT // 2]) + bdat(big[LIMIT // 2 :]) + bdat(b"", last=True)
    replies, _ = client.exchange(write, 5)
    assert codes(replies) == [
        b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"552 5.3.4", b"503 5.5.1"
    ], replies  # fmt: skip
    # The session goes on: the refused octets were all read, none taken for a command.
    body = BODY.replace(b"chunked", b"after too big")
    replies, _ = client.exchange(ENVELOPE + bdat(body, last=True), 3)
    assert replies[2].startswith(b"250 2.0.0 Ok: queued"), replies
    stored(mg, b"after too big")
    wait_for(
        lambda: any("552" in e["fields"]["reply"] for e in mg.events(3003)),
        TIMEOUT, what="MessageRefused (3003) with the 552",
    )  # fmt: skip


def test_bdat_without_rcpt_or_mail_is_503_and_its_chunk_is_not_commands(client: Client) -> None:
    smuggled = b"MAIL FROM:<evil@evil.test>\r\nQUIT\r\n"
    replies, _ = client.exchange(bdat(smuggled, last=True) + b"NOOP\r\n", 2)
    assert codes(replies) == [b"503 5.5.1", b"250 2.0.0"], replies
    assert b"need MAIL" in replies[0]
    write = b"MAIL FROM:<s@client.test>\r\n" + bdat(smuggled, last=True) + b"NOOP\r\n"
    replies, _ = client.exchange(write, 3)
    assert codes(replies) == [b"250 2.1.0", b"503 5.5.1", b"250 2.0.0"], replies
    assert b"need RCPT" in replies[1]


def test_data_or_rcpt_after_bdat_is_503(client: Client) -> None:
    replies, _ = client.exchange(ENVELOPE + bdat(b"Subject: x\r\n"), 3)
    assert codes(replies)[2] == b"250 2.0.0"
    [data], _ = client.exchange(b"DATA\r\n", 1)
    assert data.startswith(b"503 5.5.1 Error: DATA after BDAT"), data
    [rcpt], _ = client.exchange(f"RCPT TO:<{ALICE}>\r\n".encode(), 1)
    assert rcpt.startswith(b"503 5.5.1 Error: RCPT after BDAT"), rcpt
    [rset], _ = client.exchange(b"RSET\r\n", 1)
    assert rset.startswith(b"250")


def test_a_bad_argument_is_501(client: Client) -> None:
    for arg in (b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 5 FIRST", b"BDAT 1 LAST MORE"):
        [reply], _ = client.exchange(arg + b"\r\n", 1)
        assert reply.startswith(b"501 5.5.4 Syntax: BDAT"), (arg, reply)


def test_rset_discards_the_chunks(mg: Mailgate, client: Client) -> None:
    body = BODY.replace(b"chunked", b"after rset")
    write = ENVELOPE + bdat(b"X-Dropped: yes\r\n") + b"RSET\r\n" + ENVELOPE
    replies, _ = client.exchange(write + bdat(body, last=True), 6)
    assert codes(replies) == [b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"250 2.0.0",
                              b"250 2.1.0", b"250 2.1.5"], replies  # fmt: skip
    [end] = [client.reply()]
    assert end.startswith(b"250 2.0.0 Ok: queued"), end
    copy = stored(mg, b"after rset")
    assert b"X-Dropped" not in copy and copy.endswith(b"\n" + as_stored(body))


def test_a_client_gone_mid_chunk_leaves_nothing(mg: Mailgate) -> None:
    gone = ENVELOPE.replace(b"s@client.test", b"gone@client.test")
    with socket.create_connection(("127.0.0.1", mg.port), timeout=TIMEOUT) as sock:
        rfile = sock.makefile("rb")
        assert rfile.readline().startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n" + gone + b"BDAT 1000 LAST\r\nSubject: gone\r\n")
        while not rfile.readline().startswith(b"250 2.1.5"):  # EHLO, MAIL, RCPT answered
            pass
        rfile.close()
    # A message sent after the loss is received; the lost one never is.
    after = ENVELOPE.replace(b"s@client.test", b"after@client.test")
    c = Client(mg.port)
    try:
        c.exchange(b"EHLO client.test\r\n", 1)
        body = BODY.replace(b"chunked", b"after a loss")
        replies, _ = c.exchange(after + bdat(body, last=True), 3)
        assert replies[2].startswith(b"250 2.0.0 Ok: queued"), replies
    finally:
        c.close()
    stored(mg, b"after a loss")
    wait_for(
        lambda: any(e["fields"]["sender"] == "after@client.test" for e in mg.events(3000)),
        TIMEOUT, what="MessageReceived (3000) of the message after the loss",
    )  # fmt: skip
    assert not [e for e in mg.events(3000) if e["fields"]["sender"] == "gone@client.test"]
    assert not any(b"Subject: gone" in p.read_bytes() for p in mg.delivered("NET1", "PO1", "ALICE"))


def test_a_message_sent_with_bdat_and_with_data_are_stored_alike(
    mg: Mailgate, client: Client
) -> None:
    body = BODY.replace(b"chunked", b"alike")
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    client.exchange(ENVELOPE + b"DATA\r\n", 3)
    [by_data], _ = client.exchange(stuffed + b".\r\n", 1)
    assert by_data.startswith(b"250 2.0.0 Ok: queued"), by_data
    replies, _ = client.exchange(ENVELOPE + bdat(body, last=True), 3)
    assert replies[2].startswith(b"250 2.0.0 Ok: queued"), replies

    def two() -> list[bytes] | None:
        copies = [p.read_bytes() for p in mg.delivered("NET1", "PO1", "ALICE")]
        alike = [c for c in copies if b"\nSubject: alike\n" in c]
        return alike if len(alike) == 2 else None

    first, second = wait_for(two, TIMEOUT, what="both copies")
    assert first.endswith(b"\n" + as_stored(body)) and second.endswith(b"\n" + as_stored(body))


def test_mailgate_relays_to_mailgate_with_bdat_byte_identical(
    mg: Mailgate, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real BDAT client into mailgate: another mailgate's smtp connector (CHUNKING and
    PIPELINING offered: MAIL, RCPT and BDAT LAST in one write)."""
    config = DEFAULT_CONFIG.replace('domain = "example.test"', 'domain = "front.test"') + (
        f'\n[[connector]]\nname = "inner"\ntype = "smtp"\nhost = "127.0.0.1"\n'
        f'port = {mg.port}\nstarttls = "none"\n'
        f'\n[[route]]\nmatch = "*@po1.net1.example.test"\nconnector = "inner"\n'
    )
    front = Mailgate(tmp_path_factory.mktemp("front"), config=config)
    front.start()
    try:
        body = BODY.replace(b"chunked", b"relayed by mailgate") + b".\r\n" * 3 + b"x" * 900
        c = Client(front.port)
        try:
            c.exchange(b"EHLO client.test\r\n", 1)
            replies, _ = c.exchange(ENVELOPE + bdat(body, last=True), 3)
            assert replies[2].startswith(b"250 2.0.0 Ok: queued"), replies
        finally:
            c.close()
        copy = stored(mg, b"relayed by mailgate")
        assert copy.endswith(b"\n" + as_stored(body + b"\r\n")), "the final CRLF added"
        [sent] = front.wait_events(2448, timeout=TIMEOUT)
        assert sent["fields"]["connector"] == "inner" and "queued as" in sent["fields"]["reply"]
    finally:
        front.close()


def test_bdat_before_a_required_starttls_is_530_and_its_chunk_is_not_commands(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """aiosmtpd refuses commands before a required STARTTLS without calling them: a BDAT's
    chunk was then read as commands (here a NOOP inside it got its own 250)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = generate(root, "localhost")
    config = DEFAULT_CONFIG + (
        f'\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\nrequire_tls = true\n'
    )
    service = Mailgate(root, config=config)
    service.start()
    c = Client(service.port)
    try:
        c.exchange(b"EHLO client.test\r\n", 1)
        replies, _ = c.exchange(bdat(b"NOOP\r\nNOOP\r\n", last=True) + b"QUIT\r\n", 2)
        assert codes(replies) == [b"530 5.7.0", b"221 2.0.0"], replies
    finally:
        c.close()
        service.close()
