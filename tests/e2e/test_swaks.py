"""swaks against a running mailgate (issue 15 point 4): STARTTLS then AUTH LOGIN, AUTH not
offered in clear, PIPELINING with a refused recipient among accepted ones, and a pipelined
session over TLS with AUTH. (STARTTLS with AUTH PLAIN: test_security.py.) The service is
test_security.py's: TLS, AUTH users, relay only for authenticated clients."""

from __future__ import annotations

import subprocess

from tests.e2e import test_security
from tests.e2e.test_security import ALICE, PASSWORD
from tests.support.process import Mailgate, wait_for
from tests.support.sink import Sink

pki, sink, secure = test_security.pki, test_security.sink, test_security.secure  # fixtures
BOB = "bob@po1.net1.example.test"  # no such mailbox


def swaks_run(binary: str, mg: Mailgate, *args: str) -> subprocess.CompletedProcess[str]:
    command = [binary, "--server", f"127.0.0.1:{mg.port}", "--helo", "client.test", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_starttls_then_auth_login_relays(secure: Mailgate, sink: Sink, swaks_tls: str) -> None:
    result = swaks_run(
        swaks_tls, secure, "--tls", "--auth", "LOGIN", "--auth-user", "relayuser",
        "--auth-password", PASSWORD, "--from", "relayuser@example.org", "--to", "far@else.org",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "=== TLS started" in out, out
    # "~>" is swaks's mark of a line sent inside TLS.
    assert "~> AUTH LOGIN" in out and out.count("<~  334 ") == 2, out  # user name, password
    assert "<~  235 2.7.0" in out, out
    [got] = sink.wait_messages(1)
    assert got.recipients == ["far@else.org"]


def test_auth_is_not_offered_without_tls(secure: Mailgate, sink: Sink, swaks: str) -> None:
    result = swaks_run(
        swaks, secure, "--auth", "PLAIN", "--auth-user", "relayuser",
        "--auth-password", PASSWORD, "--from", "relayuser@example.org", "--to", "far@else.org",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Host did not advertise authentication" in out, out
    assert "250-AUTH" not in out and "250-STARTTLS" in out, out
    assert not sink.messages


def test_pipelining_with_a_refused_recipient(secure: Mailgate, swaks: str) -> None:
    result = swaks_run(
        swaks, secure, "--pipeline", "--from", "someone@example.org", "--to", f"{ALICE},{BOB}"
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr  # one recipient accepted: delivered
    assert "PIPELINING" in out
    assert "550 5.1.1" in out and BOB in out, out
    assert "354" in out and "250 2.0.0" in out, out
    # Pipelined: MAIL, both RCPTs and DATA went out before the first of their replies.
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index("-> MAIL FROM:<someone@example.org>")
    assert [line.split(":")[0] for line in lines[start : start + 4]] == [
        "-> MAIL FROM", "-> RCPT TO", "-> RCPT TO", "-> DATA"
    ], lines  # fmt: skip
    [delivered] = wait_for(lambda: secure.delivered("NET1", "PO1", "ALICE"), 10, what="ALICE")
    assert b"X-Mailer: swaks" in delivered.read_bytes()


def test_pipelined_session_over_tls_with_auth(secure: Mailgate, sink: Sink, swaks_tls: str) -> None:
    result = swaks_run(
        swaks_tls, secure, "--tls", "--pipeline", "--auth", "PLAIN", "--auth-user", "relayuser",
        "--auth-password", PASSWORD, "--from", "relayuser@example.org",
        "--to", "one@else.org,two@else.org",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "=== TLS started" in out and "<~  235 2.7.0" in out, out
    [got] = sink.wait_messages(1)
    assert sorted(got.recipients) == ["one@else.org", "two@else.org"]
