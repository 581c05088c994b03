"""Regression: a node that started gave back every node's leases in a shared store.

On PostgreSQL several nodes share the queue; a start released every lease it found, so
a second node's start took the first node's work away while it was being delivered (and
it was delivered twice). A start now gives back only the leases of its own node (the
`[service] node` prefix of each lease owner), whether it stopped cleanly or died.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailgate.config.load import parse_config
from mailgate.model import NewMessage, NewRecipient
from mailgate.observe.events import EventLog
from mailgate.queue import ops
from mailgate.queue.lock import DataDirLock
from mailgate.service.leases import release_leases_at_start
from tests.support.stores import open_store, sql


@pytest.mark.parametrize("previous_pid", [None, 4242], ids=["clean-stop", "died"])
def test_release_leases_at_start_only_own(tmp_path: Path, previous_pid: int | None) -> None:
    with open_store("postgres", tmp_path) as backend:
        now = time.time()
        conn = backend.connect()
        conn.begin()
        for queue_id, owner in (("QA", "node-a:11:smtp-1:1:"), ("QB", "node-b:22:smtp-1:1:")):
            message = NewMessage(
                queue_id, "s@example.org", (NewRecipient("r@x.test", "smtp"),), b"x", now, "c"
            )
            ops.insert_message(conn, message)
            assert len(ops.claim(conn, "smtp", owner, 1, now, 300.0)) == 1
        conn.commit()
        conn.close()
        config = parse_config({"service": {"data_dir": str(tmp_path), "node": "node-a"}})
        lock = DataDirLock(config.data_dir)
        lock.acquire()
        lock.previous_pid = previous_pid
        try:
            release_leases_at_start(backend, EventLog(), config, lock)
        finally:
            lock.release()
        states = dict(sql(backend, "SELECT message_id, state FROM recipients"))
        assert states == {"QA": "queued", "QB": "active"}, "only node-a's lease was given back"
