"""SQLite backend: WAL mode, synchronous=FULL, so every COMMIT is on disk.

Durability comes from the WAL fsync at COMMIT; the group committer makes many
concurrent sessions share one such fsync. SQLite errors are translated into
StoreError here, with `full` set for a full disk, so callers answer 452 not 451.
A file that is not a SQLite database is reported at start with its path, and so
is one with a damaged page (`initialize(check=True)` runs SQLite's quick_check,
Q159305): the service refuses to start on it rather than fail thread after thread.
An older schema is upgraded in place at start (queue/migrations.py), a newer one or a
file whose messages were moved to PostgreSQL is refused.
Security: the queue's directory is made 0700; a message deleted is not zeroed on disk
(secure_delete=FAST: its freed pages keep their bytes until reused), as a Postfix queue
file's blocks are not when it is unlinked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mailgate.errors import StoreError
from mailgate.queue import migrations
from mailgate.queue.backend import SQLITE
from mailgate.queue.migrations import SchemaStatus, Step


def store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """The StoreError for a sqlite3 error (full=True for SQLITE_FULL / ENOSPC)."""
    code = getattr(exc, "sqlite_errorcode", None)
    full = code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return StoreError(f"{what}: {exc}", full=full)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Map sqlite3 errors to StoreError (full=True for SQLITE_FULL / ENOSPC)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise store_error(what, exc) from exc


PAGE_SIZE = 2048
"""Bytes per page of a queue file this module creates."""


class SqliteConnection:
    """A sqlite3 connection in autocommit mode with explicit transactions.

    Write transactions (`begin` .. `commit`/`rollback`) also hold an flock on
    `<queue file>-writer`. SQLite's own lock cannot be waited on: a writer that
    finds it taken sleeps and retries (1, 2, 5, 10 ms ...), which under load from
    several processes made the wait, not the fsync, most of an SMTP reply's
    latency. The kernel hands a released flock to a waiter at once, so mailgate's
    processes queue for the write lock instead of polling for it; while one
    waits, its group-commit batch grows. A writer outside mailgate (the sqlite3
    shell) still meets SQLite's lock and its busy timeout.

    `lock_timeout` None waits as long as it takes: for the service's group
    committers, whose waits the supervisor watches (a stall is reported with its
    stack) and whose callers give up on their own deadlines. Anything else (the
    master, the CLI) polls and gives up with StoreError after `lock_timeout`
    seconds, so a wedged writer cannot hang an administrator's command.
    """

    dialect = SQLITE

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 30.0,
        durable: bool = True,
        lock_timeout: float | None = 30.0,
        read_only: bool = False,
    ) -> None:
        """With `read_only`, the file is opened read-only (it must exist) and every query
        refused that would write; errors met while fetching rows are StoreError too."""
        self._path = path
        self._lock_path = path.with_name(path.name + "-writer")
        self._lock_fd: int | None = None
        self._locked = False
        self._lock_timeout = lock_timeout
        self._read_only = read_only
        with translate_errors(f"open {path}"):
            if read_only:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=timeout)
                self._conn.execute("PRAGMA query_only=1")
                return
            self._conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            # A new file only (SQLite ignores it once the file has pages): 2 KiB pages.
            # Every commit appends each page it changed to the WAL whole, and a message
            # changes about a dozen (its rows, their indexes' rightmost leaves, its body's
            # overflow): 81 KiB written per 5 KiB message with 4 KiB pages, 54 with 2 KiB,
            # 38 with 1 KiB, whose longer overflow chains made a 10 MiB body 1.5x slower
            # to queue and to read (bench/sqlite_pages.py). An existing file keeps its own.
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            # Debian builds SQLite with SECURE_DELETE on: every page a DELETE frees was
            # zeroed and so written again, into the WAL, by the commit that delivered the
            # message (3 more 2 KiB frames per 5 KiB body, 9 instead of 6; issue 14). FAST
            # zeroes deleted content only in pages the commit writes anyway; a freed
            # overflow page keeps its bytes until reused, as an unlinked Postfix queue
            # file keeps its blocks. Either way only the service's user can read the queue
            # (its directory is 0700).
            self._conn.execute("PRAGMA secure_delete=FAST")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor | _ReadCursor:
        # try/except, not translate_errors: a generator context manager per statement was a
        # third of the commit thread's own time (17 statements per delivered message).
        try:
            cursor = self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise store_error("query", exc) from exc
        return _ReadCursor(cursor) if self._read_only else cursor

    def executescript(self, script: str) -> None:
        with translate_errors("script"):
            self._conn.executescript(script)

    def begin(self) -> None:
        self._lock()
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise

    def commit(self) -> None:
        self.execute("COMMIT")  # on failure the caller rolls back, which unlocks
        self._unlock()

    def rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
        finally:
            self._unlock()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # also releases the flock
            self._lock_fd, self._locked = None, False

    def _lock(self) -> None:
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(
                    self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
                )
            except OSError:
                return  # a read-only place: SQLite's own lock still serialises writers
        if self._lock_timeout is None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        else:
            self._poll_lock(self._lock_fd, self._lock_timeout)
        self._locked = True

    def _poll_lock(self, fd: int, timeout: float) -> None:
        deadline, pause = time.monotonic() + timeout, 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the queue {self._path} is held by another writer "
                        f"for over {timeout:g}s (is a mailgate process wedged?)"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _unlock(self) -> None:
        if self._locked and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._locked = False


class _ReadCursor:
    """A cursor whose row fetches translate errors too: a damaged page may be met only
    while stepping through the rows (`mailgate queue check` reports it, never crashes)."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        with translate_errors("query"):
            return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with translate_errors("query"):
            return self._cursor.fetchall()


class SqliteBackend:
    """The embedded queue: one SQLite file, created on first use."""

    name = "sqlite"
    dialect = SQLITE

    def __init__(
        self, path: Path, *, durable: bool = True, lock_timeout: float | None = 30.0
    ) -> None:
        """With `durable` False, a COMMIT does not wait for fsync (WAL, synchronous=NORMAL):
        a power failure may undo the last commits, never corrupt the file. For processes
        that never accept mail (see Service): their writes are claims and outcomes, which a
        lost commit only makes happen again, and the next durable commit of any process
        syncs the shared WAL anyway. `lock_timeout`: see SqliteConnection."""
        self.path = path
        self.durable = durable
        self.lock_timeout = lock_timeout
        self._directory_synced = False
        self._wal = str(path.with_name(path.name + "-wal"))  # flushed once per commit

    @property
    def where(self) -> str:
        """The store, as messages name it."""
        return f"file {self.path}"

    def connect(self) -> SqliteConnection:
        return SqliteConnection(self.path, durable=self.durable, lock_timeout=self.lock_timeout)

    def connect_deferred(self) -> SqliteConnection:
        """A writer connection whose COMMIT writes the WAL without waiting for the disk
        (synchronous=NORMAL: a crash may lose its last commits, never corrupt the file),
        for a committer whose syncer calls `sync_commits` before telling anyone."""
        return SqliteConnection(self.path, durable=False, lock_timeout=self.lock_timeout)

    def sync_commits(self) -> None:
        """fdatasync the WAL: every COMMIT that returned before is on disk after this.

        Outside the writer lock, so another process's next transaction is written while
        this flush runs. A commit a checkpoint already moved into the main file is on disk
        too: SQLite syncs the WAL before and the file after each checkpoint. The first call
        also syncs the directory, which holds the WAL file's name."""
        try:  # no WAL file (no connection has one open): the main file has every commit
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if not self._directory_synced:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._directory_synced = True

    def connect_read_only(self) -> SqliteConnection | None:
        """A read-only connection for tools, or None if there is no queue file (it is
        never created here)."""
        if not self.path.is_file():
            return None
        return SqliteConnection(self.path, timeout=10.0, read_only=True)

    def close(self) -> None:
        """Nothing to release: each connection is closed by its thread."""

    def initialize(self, *, check: bool = False) -> None:
        """Create the schema or upgrade an older one in place (SQLite is upgraded at start:
        one machine, nothing to administer); refuse a newer one, a moved file, a file that
        is not a queue. With `check`, first verify every page (the process that opens the
        store for the service does, once per start)."""
        self.upgrade(check=check)

    def schema_status(self) -> SchemaStatus:
        if not self.path.exists():
            return SchemaStatus(None)
        conn = self._open()
        try:
            return migrations.status(conn)
        finally:
            conn.close()

    def upgrade(self, *, check: bool = False) -> tuple[SchemaStatus, tuple[Step, ...]]:
        """Apply pending migrations: (status before, steps applied)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = self._open()
        try:
            if check:
                self._check(conn)
            moved = self.moved_to(conn)
            if moved is not None:
                raise StoreError(
                    f"queue file {self.path} was moved to {moved}; its messages are there "
                    "now. Run the service with that [queue] url, or move the file away to "
                    "start a new queue here"
                )
            return migrations.upgrade(conn, self.where)
        finally:
            conn.close()

    def moved_to(self, conn: SqliteConnection) -> str | None:
        """Where `mailgate db migrate-from-sqlite` moved this file's messages, if it did."""
        if not migrations.status(conn).found:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'moved_to'").fetchone()
        return None if row is None else str(row[0])

    def _open(self) -> SqliteConnection:
        conn = self.connect()
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except StoreError as exc:
            conn.close()
            raise StoreError(f"queue file {self.path} is not usable: {exc}") from exc
        return conn

    def _check(self, conn: SqliteConnection) -> None:
        # quick_check reads every page and checks each b-tree's structure, but not that
        # indexes match their tables: O(size). 100 MB: 93 ms from the page cache, 0.9 s
        # cold (bench/quick_check.py, 2-core VM under load).
        try:
            found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
        except StoreError as exc:
            found = [str(exc)]
        if found != ["ok"]:
            raise StoreError(
                f"queue file {self.path} is damaged ({'; '.join(found)}); the service will "
                "not run on it: `mailgate queue check` says what to do"
            )
