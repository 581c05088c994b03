"""The narrow interface between the queue and a SQL database.

Every operation of the queue, writes (ops.py, admin.py, ...) and reads (reader.py and
the modules it uses), is a plain function over a `Connection`, the one protocol, and
uses only portable SQL with `?` placeholders; a backend adapts placeholders and types.
SQLite (sqlite.py) and PostgreSQL (postgres.py) implement the same protocol. Where
the two must differ, the connection's `dialect` says so, and the query adds the
clause only one of them knows (FOR UPDATE SKIP LOCKED): the SQL stays in queue/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a store's SQL can say beyond the portable subset."""

    name: str
    skip_locked: bool  # SELECT ... FOR UPDATE SKIP LOCKED: claims never wait on each other
    # Writers run at once under READ COMMITTED: a decision read from rows others may be
    # changing locks a row first (SELECT ... FOR UPDATE) so the deciders take turns.
    row_locks: bool = False
    # WITH m AS (INSERT ...) INSERT ...: several tables written by one statement, one round
    # trip (a message, its body and its recipients: ops.insert_message).
    writing_ctes: bool = False

    def for_update(self) -> str:
        """The clause that locks the rows a SELECT reads, where writers run at once."""
        return " FOR UPDATE" if self.row_locks else ""


SQLITE = Dialect("sqlite", skip_locked=False)  # one writer at a time: nothing to skip
POSTGRES = Dialect("postgres", skip_locked=True, row_locks=True, writing_ctes=True)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One database connection, used by one thread only."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Pipelining(Protocol):
    """A connection that can send a whole transaction at once (PostgreSQL's pipeline
    mode, pg_pipeline.py): errors then come back late, so the caller must be able to run
    the transaction again the ordinary way when `pipeline_failed` says one did."""

    def begin_pipelined(self) -> None: ...

    def pipeline_failed(self) -> bool: ...


class Backend(Protocol):
    """Opens connections; each thread opens its own, inside the thread."""

    name: str
    dialect: Dialect

    def connect(self) -> Connection: ...

    def connect_read_only(self) -> Connection | None:
        """A connection that cannot write, for tools; None if the store does not exist
        (a tool that only reads never creates it)."""
        ...

    def initialize(self) -> None:
        """Create or upgrade the schema; raise StoreError with a clear reason if unusable."""
        ...
