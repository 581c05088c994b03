"""PostgreSQL backend: one queue that several processes or nodes share (psycopg 3).

Durability is the server's: synchronous_commit is left at its setting (on unless the
operator says otherwise), so a COMMIT that returned is on disk. The connections of a
process come from one bounded pool ([queue] pool_size) and are taken for one
transaction or one statement and given back at once: a thread holds none while it
delivers or waits, so a process needs one connection per transaction at the same time
(its committer) plus its readers' brief reads, not one per thread (docs/nodes.md).
Placeholders `?` become `%s`. psycopg errors become StoreError at one boundary
(`translate_errors`; `full` for SQLSTATE 53100, disk full). A lost connection is a
StoreError like any other, so a receiver answers 451 and nothing is lost; the broken
connection is dropped and the pool's others checked, and a BEGIN (or a read outside a
transaction) that meets one dead connection is tried once more on a fresh one. The
URL may carry a password: messages and `repr` show it redacted (`redact`), never whole.
The pool (queue/pool.py) starts no thread: connections are opened in the thread that
needs one, so a refused login is that caller's StoreError at once, with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mailgate.errors import StoreError
from mailgate.queue import migrations
from mailgate.queue.backend import POSTGRES
from mailgate.queue.migrations import SchemaStatus, Step
from mailgate.queue.pg_pipeline import LazyRows, PipelinedTx
from mailgate.queue.pool import PgConnection, Pool, PoolBusy

DISK_FULL = "53100"
CONNECT_TIMEOUT = 5  # seconds one connection attempt may take
POOL_TIMEOUT = 5.0  # seconds a thread waits for a connection before its caller hears 4xx


def redact(url: str) -> str:
    """The URL with its password (in the user part or a `password=` parameter) as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        userinfo, at, host = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(key == "password" for key, _ in query):
            safe = [(key, "***" if key == "password" else value) for key, value in query]
            parts = parts._replace(query=urllib.parse.urlencode(safe, safe="*"))
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://(a URL that does not parse)"


@functools.lru_cache(maxsize=2048)
def pyformat(sql: str) -> str:
    """`?` placeholders outside string literals as `%s`, and every `%` doubled."""
    parts = sql.split("'")  # even parts are outside literals ('' escapes keep the parity)
    return "'".join(
        part.replace("%", "%%").replace("?", "%s") if n % 2 == 0 else part.replace("%", "%%")
        for n, part in enumerate(parts)
    )


@contextlib.contextmanager
def translate_errors(what: str, where: str) -> Iterator[None]:
    """Map psycopg errors (and the pool's) to StoreError, full=True for a full disk."""
    try:
        yield
    except psycopg.Error as exc:
        full = getattr(exc, "sqlstate", None) == DISK_FULL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"{what} on the queue {where}: {reason}", full=full) from exc


class Rows:
    """A statement's result, read at once (every query of the queue is bounded)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self._rowcount = rowcount

    @property
    def rowcount(self) -> int:
        return self._rowcount

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next :], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PostgresConnection:
    """The queue's connection protocol over pooled connections, for one thread.

    Between `begin` and `commit`/`rollback` it holds one pooled connection; a statement
    outside a transaction borrows one for itself (autocommit)."""

    dialect = POSTGRES

    def __init__(self, backend: PostgresBackend, *, read_only: bool = False) -> None:
        self._backend = backend
        self._tx: PgConnection | None = None
        self._pipe: PipelinedTx | None = None  # the open transaction's statements
        self._read_only = read_only

    @property
    def where(self) -> str:
        return self._backend.where

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows | LazyRows:
        if self._pipe is not None:
            return self._pipe.execute(pyformat(sql) if params else sql, params)
        for attempt in (1, 2):
            conn = self._backend.take()
            try:
                return self._run(conn, sql, params)
            except StoreError:
                # A read met a connection that died while pooled: once more, on a fresh one.
                if attempt == 1 and conn.broken and sql.lstrip()[:6].upper() == "SELECT":
                    continue
                raise
            finally:
                self._backend.give(conn)
        raise AssertionError("unreachable")

    def _run(self, conn: PgConnection, sql: str, params: Sequence[Any]) -> Rows:
        with translate_errors("query", self._backend.where):
            cur = conn.execute(pyformat(sql), params) if params else conn.execute(sql)
            rows = cur.fetchall() if cur.description is not None else []
            return Rows(rows, cur.rowcount)

    def begin(self) -> None:
        self._check_can_begin()
        for attempt in (1, 2):
            conn = self._backend.take()
            try:
                with translate_errors("begin", self._backend.where):
                    conn.execute("BEGIN")
            except StoreError:
                broken = conn.broken
                self._backend.give(conn)
                if attempt == 1 and broken:
                    continue  # it died while pooled; nothing was done on it
                raise
            self._tx = conn
            self._pipe = PipelinedTx(conn, self._translate)
            return

    def begin_pipelined(self) -> None:
        """BEGIN a `blind` transaction (pg_pipeline.py): nothing is sent for until a
        result is read or the COMMIT, so a batch that reads nothing is one round trip.
        A statement's failure makes `pipeline_failed` true: the transaction did nothing."""
        self._check_can_begin()
        conn = self._backend.take()  # one the server ended while pooled is never handed out
        try:
            pipe = PipelinedTx(conn, self._translate, blind=True, begin=True)
        except BaseException:
            self._backend.give(conn)
            raise
        self._tx, self._pipe = conn, pipe

    def pipeline_failed(self) -> bool:
        """Whether a statement of the open `blind` transaction failed with the connection
        still up: the server said so, nothing of it was committed, the batch can run again
        (a lost connection is not that: a COMMIT sent may have been done)."""
        conn, pipe = self._tx, self._pipe
        return (
            conn is not None
            and pipe is not None
            and pipe.blind
            and pipe.failed
            and not pipe.lost
            and not conn.broken
            and not conn.closed
        )

    def _check_can_begin(self) -> None:
        if self._tx is not None:
            raise StoreError("begin inside a transaction")
        if self._read_only:
            raise StoreError("a read-only queue connection cannot write")

    def _translate(self, what: str) -> contextlib.AbstractContextManager[None]:
        return translate_errors(what, self._backend.where)

    def commit(self) -> None:
        conn, pipe = self._tx, self._pipe
        if conn is None or pipe is None:
            raise StoreError("commit outside a transaction")
        try:
            pipe.commit()  # the batch and its COMMIT in one round trip (pg_pipeline.py)
        except StoreError as exc:  # the caller rolls back, which gives the connection back
            raise StoreError(f"{exc} on the queue {self._backend.where}") from exc
        self._tx, self._pipe = None, None
        self._backend.give(conn)

    def rollback(self) -> None:
        conn, self._tx = self._tx, None
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
        if conn is None:
            return
        try:
            if not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
        finally:
            self._backend.give(conn)

    def close(self) -> None:
        self.rollback()


class PostgresBackend:
    """The shared queue in a PostgreSQL database, named by a postgresql:// URL."""

    name = "postgres"
    dialect = POSTGRES
    durable = True  # synchronous_commit is the server's: no per-process choice here

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        timeout: float = POOL_TIMEOUT,
        application_name: str = "mailgate",
    ) -> None:
        self._url = url
        self.where = redact(url)
        self.pool_size = pool_size
        self.timeout = timeout
        self._kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
        try:
            given = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"the queue URL {self.where} is not valid: {exc}") from None
        if "application_name" not in given:
            self._kwargs["application_name"] = application_name
        self._pool: Pool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresBackend({self.where!r}, pool_size={self.pool_size})"

    def connect(self) -> PostgresConnection:
        return PostgresConnection(self)

    def connect_read_only(self) -> PostgresConnection | None:
        """A connection for tools that only read (a transaction, which every write takes,
        is refused on it); None while the database holds no queue schema: a read never
        creates one."""
        if self.schema_status().found is None:
            return None
        return PostgresConnection(self, read_only=True)

    def initialize(self, *, check: bool = False) -> None:
        """Refuse to run on a store whose schema is not this mailgate's, naming the command
        to run: a PostgreSQL store is upgraded by the operator, never at a node's start.
        `check` (SQLite's page check) has no equivalent here: the server checks its pages."""
        found = self.schema_status()
        if not found.current:
            raise StoreError(found.refusal(self.where))

    def schema_status(self) -> SchemaStatus:
        return migrations.status(self.connect())

    def upgrade(self) -> tuple[SchemaStatus, tuple[Step, ...]]:
        """Apply pending migrations in one transaction: (status before, steps applied)."""
        return migrations.upgrade(self.connect(), self.where)

    def take(self) -> PgConnection:
        """A connection from this process's pool, or StoreError within `timeout`."""
        pool = self._open_pool()
        try:
            with translate_errors("connect", self.where):
                return pool.take()
        except PoolBusy:
            raise StoreError(
                f"no connection to the queue {self.where} within {self.timeout:g}s: "
                "the pool is busy (every connection in use: raise [queue] pool_size?)"
            ) from None

    def give(self, conn: PgConnection) -> None:
        pool = self._pool
        if pool is None or pool.pid != os.getpid():
            conn.close()
            return
        pool.give(conn)  # a broken one is closed, and the idle ones with it

    def close(self) -> None:
        """Close the pool (and its idle connections); a later connect opens a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def statistics(self) -> dict[str, int]:
        pool = self._pool
        return pool.statistics() if pool is not None else {"size": self.pool_size}

    def _open_pool(self) -> Pool:
        with self._lock:
            # A pool's sockets do not survive a fork: a child opens its own.
            if self._pool is None or self._pool.pid != os.getpid():
                self._pool = Pool(self.open_connection, self.pool_size, self.timeout)
            return self._pool

    def open_connection(self) -> PgConnection:
        """A new connection of this store, outside the pool (the pool's, a listener's)."""
        return psycopg.connect(self._url, **self._kwargs)
