"""queue/postgres.py's pure text work: `?` placeholders made psycopg's, and URLs redacted."""

from __future__ import annotations

import pytest

from mailgate.errors import StoreError
from mailgate.queue.postgres import PostgresBackend, pyformat, redact


def test_placeholders_outside_literals_only_and_percent_signs_kept() -> None:
    assert pyformat("SELECT a FROM t WHERE b = ? AND c = ?") == (
        "SELECT a FROM t WHERE b = %s AND c = %s"
    )
    assert pyformat("SELECT 'why?', ? WHERE x LIKE 'h%'") == "SELECT 'why?', %s WHERE x LIKE 'h%%'"
    assert pyformat("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s", "'' stays inside the literal"
    assert pyformat("SELECT 5 % ?") == "SELECT 5 %% %s"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mg:s3cret@db:5432/mail", "postgresql://mg:***@db:5432/mail"),
        (
            "postgresql://mg@db/mail?password=s3cret&sslmode=require",
            "postgresql://mg@db/mail?password=***&sslmode=require",
        ),
        ("postgresql://mg@db/mail", "postgresql://mg@db/mail"),
        ("postgres://a:b:c@[::1]:5432/x", "postgres://a:***@[::1]:5432/x"),
    ],
)
def test_a_password_never_shows(url: str, shown: str) -> None:
    assert redact(url) == shown
    backend = PostgresBackend(url)
    assert "s3cret" not in repr(backend) and backend.where == shown


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    backend = PostgresBackend("postgresql://mg:s3cret@127.0.0.1:1/mail", timeout=0.5)
    try:
        with pytest.raises(StoreError) as caught:
            backend.initialize()
        assert "s3cret" not in str(caught.value) and "mg:***@127.0.0.1:1" in str(caught.value)
        # The pool opens connections in the caller's thread: the server's reason, at once.
        assert "Connection refused" in str(caught.value)
    finally:
        backend.close()
