"""A PostgreSQL transaction in pipeline mode: a group commit in one round trip.

A group commit runs each operation of its batch in a savepoint of one transaction:
SAVEPOINT, the operation's statements, RELEASE, and one COMMIT at the end. In pipeline
mode statements go out as they are executed and only reading a result waits for the
server. Two ways to run a transaction:

- `blind` (the committer's first try, `PostgresConnection.begin_pipelined`): BEGIN and
  every statement are queued and nothing is waited for until a result is read or the
  COMMIT. An operation that reads nothing (an accepted message: ops.insert_message is
  one statement) costs no round trip; a batch of N accepts is one, BEGIN, statements and
  COMMIT together, whose reply says the batch is on disk (synchronous_commit is the
  server's). An operation that reads a result (a claim) waits there, as it must.
  The price: a failing statement's error comes back later (at the next read or at the
  COMMIT), the server skips everything after it, and no one can tell from here which
  operation it was; the transaction is marked `failed` and did nothing (unless the
  session itself ended, `lost`: then a COMMIT sent may have been done). The committer
  (queue/commit.py) then rolls it back and runs the batch again the other way.
- otherwise, every statement but the savepoints' is sent at once and its result waited
  for, so its error is raised where it was executed, inside its operation: one failing
  operation fails only its own future (the committer's ROLLBACK TO SAVEPOINT is queued
  like the other savepoint statements, which cannot fail in a working transaction).

Either way the COMMIT travels with what is still queued and leaves pipeline mode in
the same round trip, and nothing is reported done that is not on disk: a COMMIT of a
failed transaction (the server answers it with ROLLBACK) is an error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from mailgate.errors import StoreError
from mailgate.queue.pool import PgConnection

# Statements that cannot fail in a working transaction and whose result nobody reads.
_SAVEPOINTS = re.compile(r"(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) \w+$")


class PipelinedTx:
    """One open transaction on `conn`, its statements pipelined; with `begin`, its
    BEGIN is queued here too (else the caller sent it)."""

    def __init__(
        self,
        conn: PgConnection,
        translate: Callable[[str], Any],
        *,
        blind: bool = False,
        begin: bool = False,
    ) -> None:
        self.conn = conn
        self.blind = blind
        self.failed = False  # a statement failed: the transaction can only roll back
        self.lost = False  # the session ended under it: whether a COMMIT sent was done is unknown
        self._translate = translate  # what -> a context manager mapping psycopg errors
        self._stack = contextlib.ExitStack()
        self._pipeline = self._stack.enter_context(conn.pipeline())
        self._unsent = 0
        if begin:
            self.execute("BEGIN", ())

    def execute(self, sql: str, params: Sequence[Any]) -> LazyRows:
        """Queue a statement; unless `blind` or a savepoint's, wait for its result."""
        cur = self.conn.cursor()
        with self._watch("query"):
            cur.execute(sql, params or None)  # may raise an earlier statement's error
        self._unsent += 1
        rows = LazyRows(self, cur)
        if not self.blind and not _SAVEPOINTS.match(sql):
            rows.load()  # its error, if any, is its operation's
        return rows

    def sync(self) -> None:
        """Send what is queued and wait for the replies; StoreError if one failed."""
        if not self._unsent:
            return
        self._unsent = 0
        with self._watch("query"):
            self._pipeline.sync()

    def commit(self) -> None:
        """COMMIT with what is queued, leaving pipeline mode: one round trip; StoreError
        if any statement or the COMMIT failed."""
        cur = self.conn.cursor()
        with self._watch("commit"):
            cur.execute("COMMIT")
            self._unsent = 0
            self._stack.close()  # its Sync sends the COMMIT and waits for every reply
        # A COMMIT of a failed transaction "succeeds" as a ROLLBACK: never report that.
        if cur.statusmessage != "COMMIT":
            self.failed = True
            raise StoreError(f"commit: the transaction failed (the server did {cur.statusmessage})")

    def close(self) -> None:
        """Leave pipeline mode (what is still queued is sent; its errors are dropped: the
        caller rolls back)."""
        with contextlib.suppress(psycopg.Error):
            self._stack.close()

    @contextlib.contextmanager
    def _watch(self, what: str) -> Iterator[None]:
        try:
            with self._translate(what):
                yield
        except StoreError as exc:
            self.failed = True
            self.lost = self.lost or _session_ended(exc.__cause__)
            raise


def _session_ended(error: BaseException | None) -> bool:
    """Whether an error says the session is gone rather than that a statement failed: no
    SQLSTATE (the socket closed), a connection exception (08) or operator intervention
    (57: the backend was terminated, the server shuts down). Only a statement's failure
    proves that the transaction, and its COMMIT, were not done."""
    state = getattr(error, "sqlstate", None)
    return not isinstance(error, psycopg.Error) or state is None or state[:2] in ("08", "57")


class LazyRows:
    """A statement's result, read when first asked for (that sends the queue)."""

    def __init__(self, tx: PipelinedTx, cur: psycopg.Cursor[Any]) -> None:
        self._tx = tx
        self._cur = cur
        self._rows: list[Any] | None = None
        self._next = 0
        self._count = -1

    def load(self) -> list[Any]:
        if self._rows is None:
            self._tx.sync()
            cur = self._cur
            self._rows = cur.fetchall() if cur.description is not None else []
            self._count = cur.rowcount
        return self._rows

    @property
    def rowcount(self) -> int:
        self.load()
        return self._count

    def fetchone(self) -> Any:
        rows = self.load()
        if self._next >= len(rows):
            return None
        self._next += 1
        return rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows = self.load()
        rest, self._next = rows[self._next :], len(rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())
