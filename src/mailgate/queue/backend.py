"""The narrow interface between the queue and a SQL database.

Every operation of the queue, writes (ops.py, admin.py, ...) and reads (reader.py and
the modules it uses), is a plain function over a `Connection`, the one protocol, and
uses only portable SQL with `?` placeholders; a backend adapts placeholders and types.
SQLite is the first backend; PostgreSQL implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One database connection, used by one thread only."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Opens connections; each thread opens its own, inside the thread."""

    name: str

    def connect(self) -> Connection: ...

    def connect_read_only(self) -> Connection | None:
        """A connection that cannot write, for tools; None if the store does not exist
        (a tool that only reads never creates it)."""
        ...

    def initialize(self) -> None:
        """Create or upgrade the schema; raise StoreError with a clear reason if unusable."""
        ...
