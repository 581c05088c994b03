"""Regression (issue 14): finishing a delivered message zeroed its body's freed pages, and so
wrote each of them into the WAL again.

Debian builds SQLite with SECURE_DELETE on. The commit recording a delivery deletes the
message's body; every overflow page that freed was overwritten with zeros and appended to
the WAL, which the next durable commit (a 250's) then flushed: three more 2 KiB pages per
delivered 5 KiB message. queue/sqlite.py sets `secure_delete=FAST`: deleted content is
zeroed only in pages the commit writes anyway. On a real SQLite file, through the queue's
own operations: the WAL frames one delivery's commit appends do not grow with the body.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.queue import ops
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import PAGE_SIZE, SqliteBackend

OWNER = "test:1:t1:"
FRAME = 24 + PAGE_SIZE  # a WAL frame: its header and one page


def _frames_to_finish(backend: SqliteBackend, body: bytes) -> int:
    """WAL frames appended by the commit that records the delivery of a message of `body`."""
    now = time.time()
    message = NewMessage(
        new_queue_id(now), "s@example.org", (NewRecipient("a@po.test", "postoffice"),),
        body, now, "test [127.0.0.1]",
    )  # fmt: skip
    conn = backend.connect()
    try:
        conn.begin()
        ops.insert_message(conn, message)
        (claim,) = ops.claim(conn, "postoffice", OWNER, 1, now, 300.0)
        conn.commit()
        wal = Path(f"{backend.path}-wal")
        before = wal.stat().st_size
        conn.begin()
        outcome = Outcome(claim, Disposition.DELIVERED, "250 ok", now, now)
        ops.record_outcomes(conn, [outcome], OWNER, RetryPolicy(), 3, now)
        conn.commit()
        return (wal.stat().st_size - before) // FRAME
    finally:
        conn.close()


def test_finishing_a_delivered_message_does_not_rewrite_its_freed_pages(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    keep = backend.connect()  # holds the WAL open: no checkpoint resets it between the commits
    try:
        assert keep.execute("PRAGMA secure_delete").fetchone()[0] == 2, "FAST"
        small = _frames_to_finish(backend, b"Subject: small\r\n\r\nbody\r\n")
        big_body = b"Subject: big\r\n\r\n" + os.urandom(30_000).hex().encode()[:60_000]
        overflow_pages = len(big_body) // PAGE_SIZE
        big = _frames_to_finish(backend, big_body)
    finally:
        keep.close()
    # Zeroing would append each of the ~29 freed overflow pages; FAST touches the freelist's
    # trunk page at most.
    assert overflow_pages > 20
    assert big <= small + 2, f"{big} frames for a 60 KB body against {small} for a tiny one"
