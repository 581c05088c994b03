"""Whether a SQLite queue file is exactly as the last clean stop left it, so that a start
may skip reading every page of it (`[queue] check_at_start`, Q159305).

SQLite's quick_check reads the whole file: 1.6 s for a million queued messages (1 GB)
from the page cache, several times that cold, every start. It is there for damage the
service did not make: a torn write after a crash or a power cut, a file changed or
replaced while the service was down, a restored backup. A clean stop therefore records
the file's identity (device, inode, size, modification and status-change times, of the
file and of its WAL if that holds anything) in `<queue file>-clean`; the next start,
when the data directory lock says the previous service stopped cleanly, skips the check
if both are unchanged.
The record is removed at every start before the store is opened, so a service that dies
leaves none, and anything that writes the file since (a `mailgate queue` command, the
sqlite3 shell, a copy) changes its times and brings the check back. What it cannot see
is a page that rots on the disk without a write: SQLite reports that as damage when the
page is read (event 4001 while running), and `mailgate queue check` checks every page.

Only the lock holder (master or single process) calls this, at start and at stop. Every
failure to read or write the record means "check": it never stops a start or a stop
(failing to write or remove it is event 1056, by the caller).
A PostgreSQL store has no file here: nothing is recorded and nothing is skipped (its
start runs no page check anyway).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from mailgate.queue.sqlite import SqliteBackend

SUFFIX = "-clean"
_FILES = ("", "-wal")


def _record_path(db: Path) -> Path:
    return db.with_name(db.name + SUFFIX)


def identity(db: Path) -> dict[str, list[int] | None]:
    """The stat fields that any write or replacement of the file or its WAL changes. An
    empty WAL is no WAL (it holds no page): a read-only tool, `mailgate queue list` with
    the service stopped, leaves one behind; a checkpoint that emptied a WAL wrote the
    file itself, whose times say so."""
    found: dict[str, list[int] | None] = {}
    for suffix in _FILES:
        try:
            st = os.stat(db.with_name(db.name + suffix))
        except FileNotFoundError:
            found[suffix or "db"] = None
            continue
        if suffix and st.st_size == 0:
            found[suffix] = None
            continue
        found[suffix or "db"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return found


def record(backend: object) -> str | None:
    """At a clean stop, once nothing of this service writes the file any more: note its
    identity. None when noted, or when there is nothing to note (not SQLite, no file);
    else why it could not be (the caller's event 1056)."""
    if not isinstance(backend, SqliteBackend) or not backend.path.exists():
        return None
    target = _record_path(backend.path)
    temporary = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identity(backend.path), f)
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        return str(exc)
    return None


def unchanged(backend: object) -> bool:
    """Whether the file is as the record of the last clean stop says (False when there
    is no record, or it cannot be read)."""
    if not isinstance(backend, SqliteBackend):
        return False
    try:
        noted = json.loads(_record_path(backend.path).read_text())
    except (OSError, ValueError):
        return False
    return bool(noted) and noted == identity(backend.path) and noted.get("db") is not None


def forget(backend: object) -> str | None:
    """At start, before the store is opened: a service that dies from here on leaves no
    record that would vouch for the file. None when done (or nothing to do), else why
    not (the caller's event 1056; the lock's record of an unclean end still forces the
    check after a crash)."""
    if not isinstance(backend, SqliteBackend):
        return None
    try:
        _record_path(backend.path).unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(exc)
    return None


def record_path(backend: object) -> str:
    """Where the record is (for messages): `<queue file>-clean`, or "" without a file."""
    return str(_record_path(backend.path)) if isinstance(backend, SqliteBackend) else ""
