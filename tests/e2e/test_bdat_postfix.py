"""BDAT with a real Postfix, private instances on loopback ports (tests/support/postfix.py):

- mailgate's smtp connector relays to Postfix (3.7's smtpd offers CHUNKING) with BDAT, and the
  message lands in Postfix's Maildir byte-identical; with `chunking = false` it sends DATA;
- Postfix relays to mailgate, which offers CHUNKING: Postfix's smtp(8) has no BDAT (only its
  smtpd has), so it sends DATA, and the offer changes nothing for it. mailgate's own
  connector is the BDAT client into mailgate (tests/e2e/test_bdat_in.py has raw ones).

Postfix's debug_peer_list logs both dialogues, so the log says which command carried the
message.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_postfix_instance import _postfix_available
from tests.support.postfix import PostfixInstance, private
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

pytestmark = [pytest.mark.usefixtures(_postfix_available.__name__), pytest.mark.timeout(120)]

ALICE = "alice@po1.net1.example.test"
U1 = "u1@postfix.test"
DEBUG = {"debug_peer_list": "127.0.0.1"}  # smtpd and smtp log every command and reply


def message(subject: str, to: str) -> bytes:
    """Headers Postfix would otherwise add, and a body of lines DATA would dot-stuff, long
    enough (300 KB) to be more than one read."""
    lines = b"".join(
        b".%06d dots and text to the end of the line ....\r\n" % n for n in range(6000)
    )
    return (
        (
            f"From: <someone@client.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 17:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        + lines
        + b".\r\n..\r\nend\r\n"
    )


def submit(port: int, to: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("someone@client.test", [to], body) == {}


def test_postfix_relays_to_mailgate_offering_chunking_byte_identical(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        with private(mailboxes=[], relayhost=f"127.0.0.1:{mg.port}", main_cf=DEBUG) as pf:
            body = message("postfix to mailgate", ALICE)
            submit(pf.port, ALICE, body)
            [path] = wait_for(
                lambda: mg.delivered("NET1", "PO1", "ALICE"), 30, what="the message in ALICE"
            )
            assert path.read_bytes().endswith(b"\n" + body.replace(b"\r\n", b"\n"))
            # Postfix logs (postlogd) after mailgate's 250, which may come after the delivery.
            log = wait_for(
                lambda: "status=sent" in (text := pf.maillog()) and text, 20, what="status=sent"
            )
            peer = f"127.0.0.1[127.0.0.1]:{mg.port}"
            assert f"< {peer}: 250-CHUNKING" in log, "mailgate offered CHUNKING"
            assert f"> {peer}: DATA" in log, "Postfix's client sends DATA all the same"
    finally:
        mg.close()


@pytest.fixture
def relaying() -> Iterator[tuple[Path, PostfixInstance]]:
    root = Path(tempfile.mkdtemp(prefix="mg-pf-bdat-"))
    try:
        root.chmod(0o755)
        (root / "postfix").mkdir()
        with PostfixInstance(root / "postfix", mailboxes=[U1], main_cf=DEBUG) as pf:
            yield root, pf
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "chunking-false"])
def test_mailgate_relays_to_postfix_with_bdat_byte_identical(
    relaying: tuple[Path, PostfixInstance], chunking: bool
) -> None:
    root, pf = relaying
    config = DEFAULT_CONFIG + (
        f'\n[[connector]]\nname = "postfix"\ntype = "smtp"\nhost = "127.0.0.1"\n'
        f'port = {pf.port}\nstarttls = "none"\nchunking = {str(chunking).lower()}\n'
        f'\n[[route]]\nmatch = "*@postfix.test"\nconnector = "postfix"\n'
    )
    (root / "mailgate").mkdir()
    mg = Mailgate(root / "mailgate", config=config)
    mg.start()
    try:
        body = message("mailgate to postfix", U1)
        submit(mg.port, U1, body)
        new = pf.maildir(U1) / "new"
        [path] = wait_for(
            lambda: new.exists() and list(new.iterdir()), 30, what="the message in u1's Maildir"
        )
        assert path.read_bytes().endswith(b"\n" + body.replace(b"\r\n", b"\n"))

        def carried() -> list[str]:
            lines = pf.maillog().splitlines()
            commands = [line for line in lines if "smtpd[" in line and ": < " in line]
            return [c.rsplit(": ", 1)[1].split()[0] for c in commands]

        wait_for(lambda: {"BDAT", "DATA"} & set(carried()), 20, what="smtpd's log of it")
        commands = carried()
        assert ("BDAT" in commands) is chunking, commands
        assert ("DATA" in commands) is not chunking, commands
        sent = mg.wait_events(2448, timeout=20)
        assert "250" in sent[0]["fields"]["reply"]
    finally:
        mg.close()
