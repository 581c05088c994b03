"""Regression (issue 14): the report query of every finished message was prepared again at
each execution.

SQLite prepares a statement again whenever a parameter compared with a column named in a
partial index's WHERE is bound anew (it may then use the index); recipients has two such
indexes on `state` (recipients_due, recipients_lease). `dsn_source._source` bound the
state, so the query run for every finished message to find recipients to report cost
about 21 us instead of 6. On a real SQLite file, through the queue's own operations
(a message with one delivered and one bounced recipient, then finished and its bounce
queued): no statement on recipients compares `state` with a bound parameter, and the
bounce is still built.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.dsn.generate import BounceGenerator
from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.queue import ops
from mailgate.queue.dsn_source import DSN_CLIENT_PREFIX, ReportQueue
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend, SqliteConnection

OWNER = "test:1:t1:"
# `state = ?`, `state IN (?, ...)` or `state <> ?` after the statement's WHERE.
BOUND_STATE = re.compile(r"\bWHERE\b.*\bstate\s*(=|<>|!=|IN\s*\()\s*\?", re.I | re.S)


def test_finishing_a_message_binds_no_state_in_a_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    seen: list[str] = []
    real = SqliteConnection.execute

    def execute(self: SqliteConnection, sql: str, params: Any = ()) -> Any:
        seen.append(sql)
        return real(self, sql, params)

    monkeypatch.setattr(SqliteConnection, "execute", execute)
    now = time.time()
    message = NewMessage(
        new_queue_id(now), "s@example.org",
        (NewRecipient("a@po.test", "smarthost"), NewRecipient("b@po.test", "smarthost")),
        b"Subject: t\r\n\r\nbody\r\n", now, "test [127.0.0.1]",
    )  # fmt: skip
    reports = ReportQueue(BounceGenerator("mx.test", "postmaster@mx.test", lambda a: "smarthost"))
    conn = backend.connect()
    try:
        conn.begin()
        ops.insert_message(conn, message)
        claims = ops.claim(conn, "smarthost", OWNER, 10, now, 300.0)
        conn.commit()
        assert len(claims) == 2
        outcomes = [
            Outcome(claims[0], Disposition.DELIVERED, "250 ok", now, now),
            Outcome(claims[1], Disposition.FAILED, "550 5.1.1 no such user", now, now),
        ]
        conn.begin()
        recorded = ops.record_outcomes(conn, outcomes, OWNER, RetryPolicy(), 3, now, reports)
        conn.commit()
        bounces = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE client = ?",
            (DSN_CLIENT_PREFIX + message.queue_id,),
        ).fetchone()[0]
    finally:
        conn.close()
    assert any(r.done for r in recorded), "the message was finished"
    assert bounces == 1, "its bounced recipient was reported"
    on_recipients = [sql for sql in seen if "recipients" in sql]
    assert any("last_reply, remote_mta FROM recipients" in sql for sql in on_recipients)
    bound = [sql for sql in on_recipients if BOUND_STATE.search(sql)]
    assert not bound, bound
