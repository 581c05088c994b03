"""The PostgreSQL queue goes away under a running service: clients get 451, nothing is lost,
and a retry succeeds once the database takes connections again.

The outage is made for this service alone, never by stopping the server (other tests use
it): the service logs in as a role of the test's own, which is refused logins (NOLOGIN)
and whose connections are ended with pg_terminate_backend; LOGIN again ends the outage.
"""

from __future__ import annotations

import secrets
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.stores import PG_URL, admin

MESSAGE = "From: a@example.org\r\nTo: alice@po1.net1.example.test\r\nSubject: {n}\r\n\r\nbody\r\n"
ALICE = "alice@po1.net1.example.test"


def send(port: int, n: int) -> tuple[int, bytes]:
    """The reply to the end of DATA of message `n` (250, or the error's code and text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("a@example.org")
        client.rcpt(ALICE)
        return client.data(MESSAGE.format(n=n).encode())


@pytest.fixture
def role() -> Iterator[tuple[str, str]]:
    """(role, URL) of a role owning a schema of its own, which it uses by default."""
    name = f"mgrole_{secrets.token_hex(5)}"
    with admin() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
        conn.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
        conn.execute(f"ALTER ROLE {name} SET search_path = {name}")
    scheme, rest = PG_URL.split("://", 1)
    try:
        yield name, f"{scheme}://{name}@{rest.split('@', 1)[-1]}"
    finally:
        with admin() as conn:
            conn.execute(f"ALTER ROLE {name} LOGIN")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(f"DROP SCHEMA {name} CASCADE")
            conn.execute(f"DROP ROLE {name}")


def outage(name: str, on: bool) -> int:
    """Refuse the role's logins and end its connections (on), or let it in again."""
    with admin() as conn:
        conn.execute(f"ALTER ROLE {name} {'NOLOGIN' if on else 'LOGIN'}")
        if not on:
            return 0
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (name,),
        ).fetchall()
        return len(ended)


def test_database_gone_means_451_and_a_retry_succeeds_once_it_is_back(
    tmp_path: Path, role: tuple[str, str]
) -> None:
    name, url = role
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + f'\n[queue]\nurl = "{url}"\n')
    try:
        assert mg.cli("db", "upgrade").returncode == 0
        mg.add_mailbox("MS:NET1/PO1/ALICE")
        mg.start()
        assert send(mg.port, 1)[0] == 250
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 1, 20, what="message 1")

        assert outage(name, on=True) >= 1, "the service's connections were ended"
        started = time.monotonic()
        code, text = send(mg.port, 2)
        assert code == 451, (code, text)
        assert time.monotonic() - started < 30, "the client is answered, not left waiting"
        assert mg.healthy() or (mg.proc is not None and mg.proc.poll() is None), "still running"
        # Events reach the log through the master a moment after the fact: poll for the one
        # that names the cause (a refused login, or the ended connection seen first).
        causes = ("not permitted to log in", "terminating connection", "server closed")
        wait_for(
            lambda: any(
                any(c in e["fields"].get("error", "") for c in causes) for e in mg.events(4001)
            ),
            15,
            what="event 4001 naming the database's refusal",
        )

        outage(name, on=False)
        replies: list[int] = []
        wait_for(lambda: replies.append(send(mg.port, 2)[0]) or replies[-1] == 250, 60,
                 interval=0.5, what="a 250 for the retried message")  # fmt: skip
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 2, 30, what="both")
        subjects = sorted(
            next(line for line in p.read_text().splitlines() if line.startswith("Subject:"))
            for p in mg.delivered("NET1", "PO1", "ALICE")
        )
        assert subjects == ["Subject: 1", "Subject: 2"], "nothing lost, nothing twice"
        assert mg.stop() == 0
    finally:
        mg.close()
