"""Regression: the PostgreSQL store's connection pool started threads of its own.

psycopg_pool runs a scheduler and worker threads that no supervisor knows of; every
thread the service starts must be registered with its supervisor. The store's pool
(queue/pool.py) opens connections in the callers' threads and starts none.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from mailgate.errors import StoreError
from mailgate.queue.pool import Pool, PoolBusy
from mailgate.queue.postgres import PostgresBackend
from tests.support.stores import admin, open_store, require_postgres


def test_postgres_pool_starts_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with open_store("postgres", tmp_path) as backend:
        assert isinstance(backend, PostgresBackend)
        seen: list[int] = []

        def read() -> None:
            conn = backend.connect()
            seen.append(conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0])
            conn.close()

        readers = [threading.Thread(target=read) for _ in range(6)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(30)
        assert seen == [0] * 6
        started = set(threading.enumerate()) - before
        assert not started, f"the pool started threads: {sorted(t.name for t in started)}"
        assert backend.statistics()["in_use"] == 0


def test_pool_waits_then_says_busy_and_reuses_what_comes_back() -> None:
    url = require_postgres()
    backend = PostgresBackend(url, pool_size=1, timeout=0.2)
    try:
        first = backend.take()
        with pytest.raises(StoreError, match="pool is busy"):
            backend.take()
        backend.give(first)
        again = backend.take()
        assert again is first, "a healthy connection is kept for the next caller"
        backend.give(again)
    finally:
        backend.close()


def test_pool_drops_a_broken_connection_and_the_idle_ones_with_it() -> None:
    url = require_postgres()
    backend = PostgresBackend(url, pool_size=2)
    try:
        a, b = backend.take(), backend.take()
        backend.give(b)
        with admin() as killer:  # as a server gone away leaves it
            killer.execute("SELECT pg_terminate_backend(%s)", (a.info.backend_pid,))
        with pytest.raises(psycopg.Error):
            a.execute("SELECT 1")
        assert a.broken
        backend.give(a)
        fresh = backend.take()
        assert fresh is not a and fresh is not b and not fresh.closed
        assert b.closed, "the idle connection was dropped with the broken one"
        backend.give(fresh)
    finally:
        backend.close()


def test_pool_busy_is_not_a_failure_to_connect() -> None:
    pool = Pool(lambda: pytest.fail("no connection should be opened"), size=0, timeout=0.05)
    with pytest.raises(PoolBusy):
        pool.take()
