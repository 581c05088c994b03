"""Regression: two nodes finishing the last two recipients of one message at once left it
open for ever (PostgreSQL, READ COMMITTED).

Each transaction counted the message's open recipients before the other committed, saw
the other's still active, and neither marked the message done (nor dropped its body, nor
queued its report). queue/ops.finish_if_done locks the message row first (SELECT ... FOR
UPDATE through the store's dialect): the second waits for the first's COMMIT, then counts
with it in view. Two connections in two threads, on real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mailgate.model import Claim, Disposition, NewMessage, NewRecipient, Outcome
from mailgate.queue import ops
from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.retry import RetryPolicy
from tests.support.process import wait_for
from tests.support.stores import admin, open_store, sql


def _delivered(claim: Claim, now: float) -> Outcome:
    return Outcome(claim, Disposition.DELIVERED, "250 ok", now, now)


def _waiting_on_a_lock(pid: int) -> bool:
    with admin() as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


def test_finish_if_done_race_two_nodes_finish_one_message(tmp_path: Path) -> None:
    with open_store("postgres", tmp_path) as backend:
        assert isinstance(backend, PostgresBackend)
        now = time.time()
        message = NewMessage(
            "Q1", "s@example.org",
            (NewRecipient("a@x.test", "smtp"), NewRecipient("b@x.test", "smtp")),
            b"Subject: race\r\n\r\nbody\r\n", now, "client.test",
        )  # fmt: skip
        setup = backend.connect()
        setup.begin()
        ops.insert_message(setup, message)
        claims = ops.claim(setup, "smtp", "node-a:1:t:1:", 2, now, 300.0)
        setup.commit()
        assert len(claims) == 2
        first, second = backend.connect(), backend.connect()
        policy = RetryPolicy()
        first.begin()
        ops.record_outcomes(first, [_delivered(claims[0], now)], "node-a:1:t:1:", policy, 3, now)
        second.begin()
        pid = second.execute("SELECT pg_backend_pid()").fetchone()[0]
        done: list[list[ops.Recorded]] = []
        other = threading.Thread(
            target=lambda: done.append(
                ops.record_outcomes(
                    second, [_delivered(claims[1], now)], "node-a:1:t:1:", policy, 3, now
                )
            )
        )
        other.start()
        # The second either waits for the first's lock (fixed) or has decided already.
        wait_for(lambda: bool(done) or _waiting_on_a_lock(pid), 20, what="the second decided")
        first.commit()
        other.join(20)
        assert done, "the second transaction went on once the first committed"
        second.commit()
        first.close()
        second.close()
        assert sql(backend, "SELECT done_at IS NOT NULL FROM messages WHERE id = 'Q1'") == [
            (True,)
        ], "the message whose recipients are all delivered is finished"
        assert sql(backend, "SELECT COUNT(*) FROM bodies") == [(0,)]
