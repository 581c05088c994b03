"""Both queue stores for the store tests: a SQLite file, and a PostgreSQL schema of its own.

A test (or fixture) that asks for `queue_backend` runs once per store: `[sqlite]` on a
file in its tmp_path, `[postgres]` in a schema created for it (CREATE SCHEMA, the
queue's tables made by `upgrade`, `search_path` set on every connection through the URL's
options) at MAILGATE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test), dropped
after it, so tests never see each other's rows. A test marked `sqlite_only` (query
plans, the writer flock, WAL) runs on SQLite alone. PostgreSQL unreachable skips, or
fails under CI=true (tools.missing). Registered as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.sqlite import SqliteBackend
from tests.support.tools import missing

PG_URL = os.environ.get("MAILGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ("sqlite", "postgres")
AnyBackend = SqliteBackend | PostgresBackend


@functools.cache
def _unreachable() -> str | None:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def require_postgres() -> str:
    """The test server's URL; skips (fails under CI=true) when it cannot be reached."""
    reason = _unreachable()
    if reason is not None:
        missing(f"PostgreSQL at {PG_URL} is not reachable ({reason}); set MAILGATE_TEST_PG")
    return PG_URL


def admin() -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to the test server as its administrator (autocommit)."""
    return psycopg.connect(require_postgres(), autocommit=True)


def with_params(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@contextlib.contextmanager
def pg_schema() -> Iterator[tuple[str, str]]:
    """(schema name, URL whose connections use it) of a new empty schema, dropped after."""
    name = f"mgtest_{secrets.token_hex(6)}"
    with admin() as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name, with_params(PG_URL, options=f"-csearch_path={name}")
    finally:
        with admin() as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@contextlib.contextmanager
def open_store(kind: str, tmp_path: Path) -> Iterator[AnyBackend]:
    """An initialised, empty store of `kind`, closed (and its schema dropped) after."""
    if kind == "sqlite":
        sqlite = SqliteBackend(tmp_path / "queue.db")
        sqlite.initialize()
        yield sqlite
        return
    with pg_schema() as (_, url):
        backend = PostgresBackend(url)
        try:
            backend.upgrade()
            backend.initialize()
            yield backend
        finally:
            backend.close()


@pytest.fixture
def queue_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyBackend]:
    with open_store(request.param, tmp_path) as backend:
        yield backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each store test once per store; `sqlite_only` ones on SQLite; `xfail_on_postgres`
    ones expected (strictly) to fail on PostgreSQL for the reason they give."""
    if "queue_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only") is not None:
        metafunc.parametrize("queue_backend", ["sqlite"], indirect=True)
        return
    params: list[Any] = list(STORES)
    xfail = metafunc.definition.get_closest_marker("xfail_on_postgres")
    if xfail is not None:
        mark = pytest.mark.xfail(strict=True, reason=xfail.kwargs["reason"])
        params = ["sqlite", pytest.param("postgres", marks=mark)]
    metafunc.parametrize("queue_backend", params, indirect=True)


def sql(backend: AnyBackend, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on its own (autocommit), as a test inspects or plants rows."""
    conn = backend.connect()
    try:
        return [tuple(row) for row in conn.execute(statement, params).fetchall()]
    finally:
        conn.close()
