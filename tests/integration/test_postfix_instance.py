"""tests/support/postfix.py: a private Postfix delivers, relays, holds, and leaves nothing behind.

Real Postfix daemons on loopback ports, driven with smtplib. Needs root and Debian's postfix
package; without them the tests skip, and with CI=true they fail instead.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postfix import POSTFIX, PostfixInstance, private
from tests.support.process import wait_for
from tests.support.sink import Sink

MESSAGE = b"Subject: private postfix\r\nMessage-ID: <pf.1@client.test>\r\n\r\nhello\r\n"


@pytest.fixture(autouse=True)
def _postfix_available() -> None:
    problem = None
    if not os.access(POSTFIX, os.X_OK):
        problem = f"{POSTFIX} is not installed (apt-get install postfix)"
    elif os.geteuid() != 0:
        problem = "a private Postfix needs root"
    if problem and os.environ.get("CI") == "true":
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)


def snapshot(path: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in [path, *path.rglob("*")] if p.exists()}


@pytest.fixture
def system_postfix() -> Iterator[None]:
    """The system's configuration must come out of every test as it went in."""
    before = snapshot(Path("/etc/postfix"))
    yield
    assert snapshot(Path("/etc/postfix")) == before


def own_paths(pf: PostfixInstance) -> None:
    """Every directory and file the instance writes lies below its root."""
    for name in ("config_directory", "queue_directory", "data_directory", "maillog_file"):
        value = subprocess.run(
            [str(Path(POSTFIX).with_name("postconf")), "-c", str(pf.etc), "-h", name],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        assert value.startswith(f"{pf.root}/"), (name, value)


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def send(port: int, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("sender@client.test", [recipient], MESSAGE)


@pytest.mark.timeout(30)
def test_delivers_into_a_maildir_and_leaves_nothing_running(system_postfix: None) -> None:
    with private(mailboxes=["alice@pf.test"]) as pf:
        assert pf.processes(), "the instance's daemons carry MAIL_CONFIG=<its etc>"
        own_paths(pf)
        root, started = pf.root, pf.processes()
        send(pf.port, "alice@pf.test")
        new = pf.maildir("alice@pf.test") / "new"
        delivered = wait_for(lambda: list(new.glob("*")) if new.exists() else [], 10, 0.05)
        assert b"hello" in delivered[0].read_bytes()
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # not an open relay without relayhost
            send(pf.port, "bob@elsewhere.test")
    assert not pf.processes()
    wait_for(lambda: not [pid for pid in started if running(pid)], 5, 0.05, "no daemon left")
    assert not root.exists()


@pytest.mark.timeout(30)
def test_relays_to_a_numeric_relayhost(system_postfix: None) -> None:
    with Sink() as sink, private(mailboxes=[], relayhost=f"127.0.0.1:{sink.port}") as pf:
        send(pf.port, "carol@remote.test")
        wait_for(lambda: sink.messages, 15, 0.05, "the message at the relayhost")
        assert sink.messages[0].recipients == ["carol@remote.test"]
        assert "status=sent" in pf.maillog()
    assert not pf.processes()


@pytest.mark.timeout(30)
def test_hold_keeps_every_message_on_the_hold_queue() -> None:
    root = Path(tempfile.mkdtemp(prefix="pf-hold-"))  # below /tmp: nobody can reach it
    try:
        pf = PostfixInstance(root, mailboxes=["dave@pf.test"], hold=True)
        with pf:
            send(pf.port, "dave@pf.test")
            wait_for(lambda: pf.queue_count("hold") == 1, 10, 0.05, "a held message")
            assert not pf.maildir("dave@pf.test").exists()
        assert pf.stop() is None  # a second stop is harmless
        assert not pf.processes()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(30)
def test_stop_kills_what_postfix_stop_cannot_end() -> None:
    with private() as pf:
        (pf.etc / "main.cf").unlink()  # postfix stop and abort now fail at once
        started = pf.processes()
        problem = pf.stop(timeout=2)
        assert problem is not None and "killed" in problem
        assert not pf.processes()
        wait_for(lambda: not [pid for pid in started if running(pid)], 5, 0.05, "no daemon left")
