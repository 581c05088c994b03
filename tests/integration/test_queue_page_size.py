"""A new queue file has 2 KiB pages, so that a commit appends less to the WAL; a file made
with other pages keeps them and works as before (SQLite changes a page size only by a
VACUUM, which mailgate never runs on a queue)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.queue import ops
from mailgate.queue.sqlite import PAGE_SIZE, SqliteBackend


def _message(size: int = 5120) -> NewMessage:
    now = time.time()
    queue_id = new_queue_id(now)
    return NewMessage(
        queue_id=queue_id,
        sender="s@example.test",
        recipients=(NewRecipient("user@po.test", "postoffice"),),
        body=b"Subject: page size\r\n\r\n" + b"x" * 76 * (size // 78) + b"\r\n",
        received_at=now,
        client="test [127.0.0.1]",
        header_message_id=f"<{queue_id}@example.test>",
    )


def _page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def _queue_one_per_commit(backend: SqliteBackend, count: int) -> tuple[list[str], int]:
    """The queue ids, and the bytes the commits appended to the WAL (measured before the
    connection closes: the last one to close checkpoints the WAL and removes it)."""
    conn = backend.connect()
    wal = backend.path.with_name(backend.path.name + "-wal")
    ids = []
    try:
        conn.execute("SELECT count(*) FROM messages").fetchone()
        before = wal.stat().st_size
        for _ in range(count):
            message = _message()
            conn.begin()
            ops.insert_message(conn, message)
            conn.commit()
            ids.append(message.queue_id)
        appended = wal.stat().st_size - before
    finally:
        conn.close()
    return ids, appended


def test_a_new_queue_file_has_2_kib_pages(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    assert PAGE_SIZE == 2048
    assert _page_size(backend.path) == PAGE_SIZE


def test_regression_a_5_kib_message_appended_62_kib_to_the_wal(tmp_path: Path) -> None:
    # With 4 KiB pages each commit of one 5 KiB message appended 15 pages to the WAL (its
    # rows, the rightmost leaf of each of its indexes, its body's overflow), 61.6 KiB; 2 KiB
    # pages make it 33.4 (81 and 54 KiB written per message with the checkpoints,
    # bench/sqlite_pages.py). Ten commits stay under the autocheckpoint (1,000 frames), so
    # the WAL grew by what they appended.
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    _, appended = _queue_one_per_commit(backend, 10)
    per_message = appended / 10
    assert per_message < 45 * 1024, f"{per_message / 1024:.1f} KiB of WAL per message"


def test_a_file_made_with_4_kib_pages_keeps_them_and_works(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA page_size=4096")
    raw.execute("CREATE TABLE made_before (x)")
    raw.commit()
    raw.close()
    backend = SqliteBackend(path)
    backend.initialize()
    ids, _ = _queue_one_per_commit(backend, 3)
    backend.initialize()  # a restart: still the file's own page size
    assert _page_size(path) == 4096
    db = sqlite3.connect(path)
    try:
        found = [r[0] for r in db.execute("SELECT id FROM messages ORDER BY received_at")]
    finally:
        db.close()
    assert found == ids
