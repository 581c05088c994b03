"""The exact EHLO keywords before and after STARTTLS, with and without AUTH credentials.

aiosmtpd takes every handler attribute whose name starts with `auth_` for an AUTH mechanism:
an attribute `auth_throttle` made mailgate advertise `AUTH THROTTLE`, which answered 451 and
logged a TypeError. Only mechanisms that work may be offered: none without credentials, and
PLAIN and LOGIN after TLS with them.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.security.certs import generate
from tests.support.process import DEFAULT_CONFIG, Mailgate
from tests.support.segments import Client

BASE = ["SIZE 10485760", "8BITMIME", "SMTPUTF8"]
TAIL = ["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "HELP"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate(tmp_path_factory.mktemp("pki"), "localhost")


@pytest.fixture(params=[False, True], ids=["no-credentials", "credentials"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path, pki: tuple[Path, Path]
) -> Iterator[tuple[Mailgate, bool]]:
    users = tmp_path / "users"
    cert, key = pki
    auth = f'auth_users = "{users}"\n' if request.param else ""
    config = DEFAULT_CONFIG + f'\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n{auth}'
    mg = Mailgate(tmp_path, config=config)
    if request.param:
        result = subprocess.run(
            mg.command("passwd", "add", "user", "--file", str(users)),
            input="secret password\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    mg.start()
    try:
        yield mg, request.param
    finally:
        mg.close()


def keywords(client: smtplib.SMTP) -> list[str]:
    code, text = client.ehlo("client.test")
    assert code == 250, text
    return text.decode().split("\n")[1:]  # the first line is the server's name


def test_ehlo_advertises_exactly_the_auth_mechanisms_that_work(
    service: tuple[Mailgate, bool], pki: tuple[Path, Path]
) -> None:
    mg, credentials = service
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        assert keywords(client) == [*BASE, "STARTTLS", *TAIL], "no AUTH before TLS"
        client.starttls(context=ssl.create_default_context(cafile=str(pki[0])))
        after = keywords(client)
        auth = ["AUTH LOGIN PLAIN"] if credentials else []
        assert after == [*BASE, *auth, *TAIL]
        code, text = client.docmd("AUTH", "THROTTLE")
        assert (code, text[:5]) == (504, b"5.5.4"), (code, text)
        if not credentials:
            assert client.docmd("AUTH", "PLAIN AHVzZXIAc2VjcmV0")[0] == 504
    assert not mg.events(3004), "no session hit an unexpected exception"


def test_ehlo_reply_after_starttls_is_one_write(
    service: tuple[Mailgate, bool], pki: tuple[Path, Path]
) -> None:
    mg, _ = service
    client = Client(mg.port)
    try:
        client.exchange(b"EHLO client.test\r\n", 1)
        [ready], _ = client.exchange(b"STARTTLS\r\n", 1)
        assert ready.startswith(b"220 "), ready
        context = ssl.create_default_context(cafile=str(pki[0]))
        tls = context.wrap_socket(client.sock, server_hostname="localhost")
        client.sock, client.rfile = tls, tls.makefile("rb")
        # TLS 1.3 session tickets may follow the handshake: a NOOP reply comes after them.
        assert client.exchange(b"NOOP\r\n", 1)[0][0].startswith(b"250 ")
        [ehlo], segments = client.exchange(b"EHLO client.test\r\n", 1)
        assert ehlo.endswith(b"250 HELP\r\n") and ehlo.count(b"\n") >= 6, ehlo
        assert segments == 1, f"the EHLO reply over TLS took {segments} segments"
    finally:
        client.close()
