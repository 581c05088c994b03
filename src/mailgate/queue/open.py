"""Which queue store a configuration names, opened: the one place that chooses.

`[queue] url` selects the PostgreSQL store shared by several nodes; without it the
SQLite file (`[queue] path`, default `<data_dir>/queue/queue.db`) is the embedded
default. Nothing outside queue/ needs to know which one it got: both implement the
Backend protocol. Opening connects to nothing yet (each thread connects in itself);
`initialize` says whether the store can be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from mailgate.config.schema import QueueSettings
from mailgate.queue.sqlite import SqliteBackend

if TYPE_CHECKING:
    from mailgate.queue.postgres import PostgresBackend

StoreBackend: TypeAlias = "SqliteBackend | PostgresBackend"


def open_backend(
    settings: QueueSettings,
    data_dir: Path,
    *,
    durable: bool = True,
    lock_timeout: float | None = 30.0,
) -> StoreBackend:
    """The backend of `settings`. `durable` and `lock_timeout` are SQLite's (see
    SqliteBackend); a PostgreSQL COMMIT is always as durable as its server makes it."""
    if settings.url:
        # psycopg only for a PostgreSQL queue: 90 ms of every process start otherwise.
        from mailgate.queue.postgres import PostgresBackend

        return PostgresBackend(settings.url, pool_size=settings.pool_size)
    return SqliteBackend(settings.sqlite_path(data_dir), durable=durable, lock_timeout=lock_timeout)
