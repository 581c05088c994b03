"""Issue 6 end to end: STARTTLS and implicit TLS, AUTH, throttling, session limits, and the
classic open-relay checks, against a running service with a real smarthost sink behind it."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.security.certs import generate
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import Sink

ALICE = "alice@po1.net1.example.test"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("pki"), "localhost")


def secure_config(pki: tuple[Path, Path], users: Path, extra: str = "") -> str:
    cert, key = pki
    return (
        DEFAULT_CONFIG
        + f"""
[smtp]
relay_networks = ["10.0.0.0/8"]
tls_cert = "{cert}"
tls_key = "{key}"
auth_users = "{users}"
auth_failures = 3
{extra}
"""
    )


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture
def secure(tmp_path: Path, pki: tuple[Path, Path], sink: Sink) -> Iterator[Mailgate]:
    users = tmp_path / "users"
    mg = Mailgate(tmp_path, config=secure_config(pki, users))
    add_user(mg, users)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        yield mg
    finally:
        mg.close()


def add_user(mg: Mailgate, users: Path) -> None:
    result = subprocess.run(
        mg.command("passwd", "add", "relayuser", "--file", str(users)),
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def tls_context(pki: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki[0]))


def connect(mg: Mailgate) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mg.port, timeout=10)
    client.ehlo("client.test")
    return client


def test_starttls_then_auth_then_relay(
    secure: Mailgate, sink: Sink, pki: tuple[Path, Path]
) -> None:
    with connect(secure) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), "no AUTH offered over plain text"
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0x\0y").decode())[0] == 538
        client.starttls(context=tls_context(pki))
        client.ehlo("client.test")
        assert client.has_extn("auth") and "PLAIN" in client.esmtp_features["auth"]
        assert not client.has_extn("starttls")
        client.ehlo_or_helo_if_needed()
        client.mail("relayuser@example.org")
        assert client.rcpt("friend@elsewhere.org")[0] == 554, "not yet authenticated"
        client.login("relayuser", PASSWORD)
        client.rset()
        client.sendmail(
            "relayuser@example.org", ["friend@elsewhere.org"], b"Subject: x\r\n\r\nx\r\n"
        )
    [message] = sink.wait_messages(1)
    assert b"with ESMTPSA" in message.content
    assert secure.wait_events(3013)[0]["fields"]["user"] == "relayuser"


def test_auth_login_mechanism_and_local_delivery_over_tls(
    secure: Mailgate, pki: tuple[Path, Path]
) -> None:
    with connect(secure) as client:
        client.starttls(context=tls_context(pki))
        client.ehlo("client.test")
        client.user, client.password = "relayuser", PASSWORD
        assert client.auth("LOGIN", client.auth_login)[0] == 235
        client.sendmail("relayuser@example.org", [ALICE], b"Subject: tls\r\n\r\nover tls\r\n")
    [path] = wait_for(lambda: secure.delivered("NET1", "PO1", "ALICE"), 10, what="delivery")
    assert b"with ESMTPSA" in path.read_bytes()


def test_failed_auth_is_throttled_and_never_logs_the_password(
    secure: Mailgate, pki: tuple[Path, Path]
) -> None:
    wrong = "hunter2-not-it"
    with connect(secure) as client:
        client.starttls(context=tls_context(pki))
        client.ehlo("client.test")
        for _ in range(3):
            assert client.docmd("AUTH", "PLAIN " + plain("relayuser", wrong))[0] == 535
        # Even the right password is refused for the rest of the window.
        assert client.docmd("AUTH", "PLAIN " + plain("relayuser", PASSWORD))[0] == 454
    secure.wait_events(3012, count=4)
    logs = "".join(p.read_text() for p in secure.log_dir.glob("events.jsonl*")) + secure.stderr()
    assert wrong not in logs and PASSWORD not in logs
    assert base64.b64encode(f"\0relayuser\0{wrong}".encode()).decode() not in logs


def test_require_tls_and_implicit_tls(tmp_path: Path, pki: tuple[Path, Path]) -> None:
    users = tmp_path / "users"
    implicit = free_port()
    extra = f'require_tls = true\nimplicit_tls_listen = "127.0.0.1:{implicit}"\n'
    mg = Mailgate(tmp_path, config=secure_config(pki, users, extra))
    add_user(mg, users)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        with connect(mg) as client:
            code, text = client.docmd("MAIL", "FROM:<a@example.org>")
            assert (code, text[:5]) == (530, b"5.7.0")
            client.starttls(context=tls_context(pki))
            client.ehlo("client.test")
            client.sendmail("a@example.org", [ALICE], b"Subject: 1\r\n\r\none\r\n")
        context = tls_context(pki)
        with smtplib.SMTP_SSL("localhost", implicit, context=context, timeout=10) as client:
            client.ehlo("client.test")
            assert not client.has_extn("starttls"), "already encrypted"
            client.sendmail("a@example.org", [ALICE], b"Subject: 2\r\n\r\ntwo\r\n")
        files = wait_for(
            lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 2
            and mg.delivered("NET1", "PO1", "ALICE"),
            10, what="two deliveries",
        )  # fmt: skip
        assert all(b"with ESMTPS" in f.read_bytes() for f in files)
    finally:
        mg.close()


def test_swaks_tls_and_auth(secure: Mailgate, sink: Sink, swaks_tls: str) -> None:
    result = subprocess.run(
        [swaks_tls, "--server", f"127.0.0.1:{secure.port}", "--tls", "--auth", "PLAIN",
         "--auth-user", "relayuser", "--auth-password", PASSWORD,
         "--from", "relayuser@example.org", "--to", "far@elsewhere.org"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    sink.wait_messages(1)


# --- the classic open-relay checks, from a client outside relay_networks, unauthenticated --
RELAY_ATTEMPTS = [
    "victim@elsewhere.org",
    "user%victim.org@po1.net1.example.test",
    "victim.org!user@po1.net1.example.test",
    "@po1.net1.example.test:user@victim.org",
    '"user@victim.org"@po1.net1.example.test',
    "user@[1.2.3.4]",
    "user@[127.0.0.1]",
    "USER@ELSEWHERE.ORG",
    "user@elsewhere.org.",
    "user@evil-example.test",
    "user@example.test.evil.org",
    "user@po1.net1.example.test.evil.org",
    "user@po1.net1.example.test@evil.org",
]


def test_open_relay_attempts_are_refused(secure: Mailgate, sink: Sink) -> None:
    with connect(secure) as client:
        client.mail("spammer@example.org")
        for address in RELAY_ATTEMPTS:
            code, text = client.docmd("RCPT", f"TO:<{address}>")
            assert 500 <= code < 600, (address, code, text)
        assert client.docmd("RCPT", f"TO:<{ALICE}>")[0] == 250, "local mail still accepted"
    assert sink.connections == 0 and sink.messages == []


def test_local_domain_tricks_never_relay_even_for_trusted_clients(
    tmp_path: Path, sink: Sink
) -> None:
    """From loopback (in relay_networks by default) relaying is allowed, yet an address in
    our own postoffice domain never reaches the smarthost however it is dressed up."""
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        with connect(mg) as client:
            client.mail("trusted@example.org")
            # (A source route is ignored, as RFC 5321 says: what remains is a plain remote
            # address, which a trusted client may relay to; it is not a local-domain trick.)
            for address in RELAY_ATTEMPTS:
                if address.endswith("@po1.net1.example.test") and not address.startswith("@"):
                    code, text = client.docmd("RCPT", f"TO:<{address}>")
                    assert code in (550, 553, 501), (address, code, text)
    finally:
        mg.close()
    assert sink.messages == []


def test_open_relay_attempts_through_pickup_do_not_leave(secure: Mailgate, sink: Sink) -> None:
    """Pickup is a local submission and may relay; but an address whose domain is local never
    turns into a relay through %, !, quoting or source routes: it fails and bounces."""
    outbox = secure.data_dir / "postoffice" / "NET1" / "PO1" / "outbox"
    assert outbox.is_dir(), "created with the postoffice"
    local_hacks = [a for a in RELAY_ATTEMPTS if a.endswith("@po1.net1.example.test")]
    lines = "".join(f"X-Receiver: <{a}>\n" for a in local_hacks)
    (outbox / "hack.eml").write_text(f"X-Sender: {ALICE}\n{lines}Subject: hack\n\nx\n")
    wait_for(lambda: not (outbox / "hack.eml").exists(), 10, what="pickup")
    secure.wait_events(2117)  # the failed recipients bounce to the sender
    assert sink.messages == []


def test_session_limits_and_error_limit(tmp_path: Path, pki: tuple[Path, Path]) -> None:
    # Limits hold per receive process (clients are spread over them): one here.
    extra = "max_sessions_per_ip = 3\nmax_errors = 5\n"
    config = secure_config(pki, tmp_path / "users", extra) + "\n[processes]\nreceive = 1\n"
    mg = Mailgate(tmp_path, config=config)
    add_user(mg, tmp_path / "users")
    mg.start()
    try:
        held = [socket.create_connection(("127.0.0.1", mg.port), timeout=10) for _ in range(3)]
        for sock in held:
            assert sock.recv(512).startswith(b"220")
        with socket.create_connection(("127.0.0.1", mg.port), timeout=10) as extra_sock:
            assert extra_sock.recv(512).startswith(b"421 4.7.0")
        held.pop().close()
        wait_for(lambda: _greets(mg.port), 10, what="a free session slot again")
        with socket.create_connection(("127.0.0.1", mg.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            for _ in range(5):
                sock.sendall(b"BOGUS\r\n")
            replies = [reader.readline() for _ in range(6)]
            assert replies[-1].startswith(b"421 4.7.0"), replies
            assert reader.readline() == b"", "the server closed the connection"
        mg.wait_events(3011)
        for sock in held:
            sock.close()
    finally:
        mg.close()


def _greets(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(512).startswith(b"220")
