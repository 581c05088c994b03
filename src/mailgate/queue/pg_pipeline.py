"""A PostgreSQL transaction in pipeline mode: fewer round trips per group commit.

A group commit runs each operation of its batch in a savepoint of one transaction:
SAVEPOINT, the operation's statements, RELEASE, and one COMMIT at the end. The
savepoint statements cannot fail in a transaction that works, and nothing reads their
results, so they are queued on the connection (pipeline mode) and travel with the
next statement: the RELEASE of one operation and the SAVEPOINT of the next go with
the next operation's first statement, and the last RELEASE with the COMMIT, whose
reply says the batch is on disk (synchronous_commit is the server's). With a message
written by one statement (ops.insert_message), a batch of N accepted messages costs its
BEGIN, one round trip per message and one for the COMMIT: N + 2, where it was 5N + 2.

Every other statement is sent at once with what is queued, and its error is raised
where it was executed, inside its operation: one failing operation still fails only
its own future (the committer's ROLLBACK TO SAVEPOINT is queued like the others), and
nothing is reported done that is not on disk. A batch in one round trip would need its
operations' errors to arrive before their results are handed out, that is the
committer's own affair (queue/commit.py), not the store's.
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
    """One open transaction on `conn` (BEGIN already sent), its statements pipelined."""

    def __init__(self, conn: PgConnection, translate: Callable[[str], Any]) -> None:
        self.conn = conn
        self._translate = translate  # what -> a context manager mapping psycopg errors
        self._stack = contextlib.ExitStack()
        self._pipeline = self._stack.enter_context(conn.pipeline())
        self._unsent = 0

    def execute(self, sql: str, params: Sequence[Any]) -> LazyRows:
        """Queue a savepoint statement; send any other at once, with the queue."""
        cur = self.conn.cursor()
        with self._translate("query"):
            cur.execute(sql, params or None)
        self._unsent += 1
        rows = LazyRows(self, cur)
        if not _SAVEPOINTS.match(sql):
            rows.load()  # its error, if any, is its operation's
        return rows

    def sync(self) -> None:
        """Send what is queued and wait for the replies; StoreError if one failed."""
        if not self._unsent:
            return
        self._unsent = 0
        with self._translate("query"):
            self._pipeline.sync()

    def commit(self) -> None:
        """COMMIT with what is queued, in one round trip; StoreError if it failed."""
        cur = self.conn.cursor()
        with self._translate("commit"):
            cur.execute("COMMIT")
            self._unsent += 1
            self.sync()
        self.close()
        # A COMMIT of a failed transaction "succeeds" as a ROLLBACK: never report that.
        if cur.statusmessage != "COMMIT":
            raise StoreError(f"commit: the transaction failed (the server did {cur.statusmessage})")

    def close(self) -> None:
        """Leave pipeline mode (what is still queued is sent; its errors are dropped: the
        caller rolls back)."""
        with contextlib.suppress(psycopg.Error):
            self._stack.close()


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
