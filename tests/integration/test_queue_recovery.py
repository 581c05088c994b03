"""The queue's recovery paths on both stores, with SQLite's query plans: attempts that
end without an outcome (Q151791) and suspects claimed alone, expiry of recipients nobody
attempts (Q237182), reports that cannot be built (Q175965), and waiting mail of a
connector the configuration no longer has (Q243701)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.dsn.generate import BounceGenerator, BounceResult
from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.queue import expiry, ops
from mailgate.queue.backend import Connection
from mailgate.queue.commit import DirectWriter
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from tests.support.stores import AnyBackend, sql

OWNER = "node:1:postoffice-1:1:"


def message(*rcpts: str, at: float | None = None, sender: str = "s@example.org") -> NewMessage:
    now = time.time() if at is None else at
    return NewMessage(
        queue_id=new_queue_id(now),
        sender=sender,
        recipients=tuple(NewRecipient(r, "postoffice") for r in rcpts),
        body=b"Subject: x\r\n\r\nbody\r\n",
        received_at=now,
        client="test [127.0.0.1]",
    )


@pytest.fixture
def backend(queue_backend: AnyBackend) -> AnyBackend:
    return queue_backend


@pytest.fixture
def store(backend: AnyBackend) -> Iterator[QueueStore]:
    writer = DirectWriter(backend)
    store = QueueStore(
        backend, writer, policy=RetryPolicy(60, 600, 3600), lease=30, max_internal_failures=3
    )
    store.use_reports(BounceGenerator("mx.test", "postmaster@mx.test", lambda a: "postoffice"))
    yield store
    writer.close()


def rows(backend: AnyBackend, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
    return sql(backend, statement, params)


def test_each_attempt_without_an_outcome_counts_and_the_limit_quarantines(
    store: QueueStore, backend: AnyBackend
) -> None:
    store.enqueue(message("a@x.test")).result(0)
    for attempt in (1, 2, 3):
        [claim] = store.claim("postoffice", OWNER, 10).result(0)
        assert claim.internal_failures == attempt - 1
        ended = store.end_leases("its worker process died", "node:1:").result(0)
        assert ended.count == 1
        if attempt < 3:
            assert ended.requeued == 1 and not ended.ended
            [(state, due, released)] = rows(
                backend, "SELECT state, due_at, released FROM recipients"
            )
            assert state == "queued" and released == 1 and due <= time.time(), "due again at once"
    [item] = ended.ended
    assert (item.state.value, item.failures, item.address) == ("quarantined", 3, "a@x.test")
    assert store.claim("postoffice", OWNER, 10).result(0) == [], "never attempted again"
    attempts = rows(backend, "SELECT disposition, reply FROM attempts ORDER BY id")
    assert len(attempts) == 3 and {d for d, _ in attempts} == {"internal-error"}
    assert "without an outcome: its worker process died" in attempts[0][1]


def test_only_expired_leases_end_when_asked_and_other_owners_are_untouched(
    store: QueueStore, backend: AnyBackend
) -> None:
    store.enqueue(message("a@x.test")).result(0)
    store.enqueue(message("b@x.test")).result(0)
    store.claim("postoffice", OWNER, 1).result(0)
    store.claim("postoffice", "node:1:postoffice-10:1:", 1).result(0)
    assert store.end_leases("its lease ran out", expired_only=True).result(0).count == 0
    sql(backend, "UPDATE recipients SET lease_until = 0 WHERE lease_owner = ?", (OWNER,))
    assert store.end_leases("its lease ran out", expired_only=True).result(0).count == 1
    assert store.end_leases("its thread died", "node:1:postoffice-1:").result(0).count == 0
    assert store.end_leases("its thread died", "node:1:postoffice-10:").result(0).count == 1


def test_an_attempt_without_an_outcome_past_the_lifetime_bounces_with_a_report(
    store: QueueStore, backend: AnyBackend
) -> None:
    old = message("a@x.test", at=time.time() - 7200)  # the policy's lifetime is 3600 s
    store.enqueue(old).result(0)
    store.claim("postoffice", OWNER, 10).result(0)
    ended = store.end_leases("its lease ran out", OWNER).result(0)
    [item] = ended.ended
    assert item.state.value == "bounced" and item.reply.startswith("554 5.4.7 ")
    [(queue_id, report)] = ended.done
    assert queue_id == old.queue_id
    assert isinstance(report, BounceResult) and report.recipient == "s@example.org"
    assert rows(backend, "SELECT done_at IS NOT NULL FROM messages WHERE id = ?", (old.queue_id,))


def test_a_clean_start_gives_leases_back_without_counting(
    store: QueueStore, backend: AnyBackend
) -> None:
    store.enqueue(message("a@x.test")).result(0)
    store.claim("postoffice", OWNER, 10).result(0)
    writer = DirectWriter(backend)
    assert writer.submit("r", lambda c: ops.release_leases(c, time.time())).result() == 1
    writer.close()
    [claim] = store.claim("postoffice", OWNER, 10).result(0)
    assert claim.internal_failures == 0 and claim.redelivery


def test_a_suspect_is_claimed_alone_and_never_mixed_into_a_batch(store: QueueStore) -> None:
    first, suspect, other = (
        message("a@x.test"),
        message("s1@x.test", "s2@x.test"),
        message("c@x.test"),
    )
    for msg in (first, suspect, other):
        store.enqueue(msg).result(0)
    claims = store.claim("postoffice", OWNER, 10).result(0)
    assert len(claims) == 4
    now = time.time()
    store.record(
        [
            Outcome(c, Disposition.DEFERRED, "451 later", now, now)
            for c in claims
            if c.queue_id != suspect.queue_id
        ],
        OWNER,
    ).result(0)
    store.end_leases("its worker process died", OWNER).result(0)  # the suspect's two recipients
    due = "UPDATE recipients SET due_at = CASE WHEN address = 'a@x.test' THEN 1 ELSE 2 END"
    sql(store.backend, due)
    batch = store.claim("postoffice", OWNER, 10).result(0)
    assert [c.address for c in batch] == ["a@x.test"], "mail due before a suspect goes without it"
    batch = store.claim("postoffice", OWNER, 10).result(0)
    assert {c.address for c in batch} == {"s1@x.test", "s2@x.test"}, "the suspect, alone"
    batch = store.claim("postoffice", OWNER, 10).result(0)
    assert [c.address for c in batch] == ["c@x.test"]


@pytest.mark.sqlite_only
def test_lease_ending_queries_walk_indexes(backend: SqliteBackend) -> None:
    db = sqlite3.connect(backend.path)
    select = (
        "EXPLAIN QUERY PLAN SELECT r.id FROM recipients r JOIN messages m "
        "ON m.id = r.message_id WHERE r.state = 'active'"
    )
    for extra, params in (("", ()), (" AND r.lease_until < ?", (0,)),
                          (" AND substr(r.lease_owner, 1, ?) = ?", (3, "x:1"))):  # fmt: skip
        plan = " ".join(str(row[3]) for row in db.execute(select + extra, params))
        # recipients_state (schema 4) finds the active ones as well as the lease index
        assert "recipients_lease" in plan or "INDEX recipients_state (state=?)" in plan, plan
        assert "SCAN" not in plan, plan
    db.close()


def test_expiry_bounces_waiting_recipients_nobody_attempts_and_walks_past_parked_ones(
    store: QueueStore, backend: AnyBackend
) -> None:
    old = time.time() - 7200  # the policy's lifetime is 3600 s
    parked = [message(f"h{n}@x.test", at=old + n) for n in range(3)]
    waiting = message("w1@x.test", "w2@x.test", at=old + 10)
    young = message("y@x.test")
    for msg in (*parked, waiting, young):
        store.enqueue(msg).result(0)
    sql(backend, "UPDATE recipients SET state = 'held' WHERE address LIKE 'h%'")
    writer = DirectWriter(backend)
    cursor, expired, done = None, [], []
    for _ in range(3):  # walks of two messages: the held ones never block the walk
        found = writer.submit(
            "x",
            lambda c, at=cursor: expiry.expire_waiting(c, time.time(), 3600, at, store.on_done, 2),
        ).result()
        cursor, expired, done = found.cursor, expired + list(found.expired), done + list(found.done)
    writer.close()
    assert sorted(e.address for e in expired) == ["w1@x.test", "w2@x.test"]
    assert all(e.reply == "554 5.4.7 message expired in queue; last error: never attempted"
               for e in expired)  # fmt: skip
    [(queue_id, report)] = done
    assert queue_id == waiting.queue_id and isinstance(report, BounceResult)
    states = dict(
        rows(backend, "SELECT address, state FROM recipients WHERE address NOT LIKE 'b%'")
    )
    assert states["y@x.test"] == "queued" and states["h0@x.test"] == "held"


def test_expiry_walks_an_index_of_open_messages_even_in_an_older_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteBackend(path).initialize()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX messages_open")  # a queue file from before the index,
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")  # which said schema 1
    db.commit()
    db.close()
    SqliteBackend(path).initialize()  # upgraded in place
    db = sqlite3.connect(path)
    plan = " ".join(
        str(row[3])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id, received_at FROM messages WHERE done_at IS NULL "
            "AND received_at <= ? AND (received_at > ? OR (received_at = ? AND id > ?)) "
            "ORDER BY received_at, id LIMIT ?",
            (0, 0, 0, "", 10),
        )
    )
    db.close()
    assert "messages_open" in plan and "TEMP B-TREE" not in plan, plan


def half_a_report_then_a_bug(conn: Connection, queue_id: str, now: float) -> Any:
    """An on_done hook that queues part of a report, then fails like a bug."""
    ops.insert_message(conn, message("s@example.org", sender=""))
    raise ZeroDivisionError("a bug in the report")


def test_a_report_that_cannot_be_built_still_records_the_outcome_and_keeps_the_message(
    store: QueueStore, backend: AnyBackend
) -> None:
    store.on_done = half_a_report_then_a_bug
    msg = message("a@x.test", "b@x.test")
    store.enqueue(msg).result(0)
    claims = store.claim("postoffice", OWNER, 10).result(0)
    now = time.time()
    outcomes = [
        Outcome(claims[0], Disposition.DELIVERED, "250 ok", now, now),
        Outcome(claims[1], Disposition.FAILED, "550 no", now, now),
    ]
    recorded = store.record(outcomes, OWNER).result(0)
    assert [r.state.value for r in recorded] == ["delivered", "bounced"]
    failure = recorded[0].done
    assert isinstance(failure, ops.ReportFailed) and not recorded[0].message_done
    assert failure.failed == ("b@x.test",) and "ZeroDivisionError" in failure.error
    states = dict(rows(backend, "SELECT address, state FROM recipients"))
    assert states == {"a@x.test": "delivered", "b@x.test": "quarantined"}, "nothing half-done"
    assert rows(backend, "SELECT COUNT(*), MAX(done_at) FROM messages") == [(1, None)]
    assert rows(backend, "SELECT COUNT(*) FROM bodies") == [(1,)], "the body is kept"
    assert store.claim("postoffice", OWNER, 10).result(0) == [], "and nothing redelivered"


def test_a_delay_warning_that_cannot_be_built_is_given_up(
    store: QueueStore, backend: AnyBackend
) -> None:
    store.delay_warner = half_a_report_then_a_bug
    store.enqueue(message("a@x.test", at=time.time() - 100)).result(0)
    [failure] = store.warn_delayed(10).result(0)
    assert isinstance(failure, ops.ReportFailed) and failure.delayed
    assert rows(backend, "SELECT COUNT(*), MAX(delay_warned) FROM messages") == [(1, 1)]
    assert store.warn_delayed(10).result(0) == [], "not retried"


def test_waiting_mail_of_a_vanished_connector_is_routed_again_or_bounced(
    store: QueueStore, backend: AnyBackend
) -> None:
    gone = NewMessage(
        queue_id=new_queue_id(),
        sender="s@example.org",
        recipients=(
            NewRecipient("local@x.test", "smarthost"),
            NewRecipient("far@elsewhere.org", "smarthost"),
            NewRecipient("held@elsewhere.org", "smarthost"),
        ),
        body=b"Subject: x\r\n\r\nbody\r\n",
        received_at=time.time(),
        client="test",
    )
    store.enqueue(gone).result(0)
    store.enqueue(message("kept@x.test")).result(0)
    sql(backend, "UPDATE recipients SET state = 'held' WHERE address = 'held@elsewhere.org'")

    def route(address: str) -> str | None:
        return "postoffice" if address.endswith("@x.test") else None

    [result] = store.reroute_vanished({"postoffice"}, route).result(0)
    assert result.connector == "smarthost" and result.moved == (("postoffice", 1),)
    [bounced] = result.bounced
    assert bounced.address == "far@elsewhere.org" and bounced.reply.startswith("554 5.4.4 ")
    assert result.done == (), "the held recipient keeps the message open"
    states = {
        a: (c, s) for a, c, s in rows(backend, "SELECT address, connector, state FROM recipients")
    }
    assert states["local@x.test"] == ("postoffice", "queued")
    assert states["far@elsewhere.org"] == ("smarthost", "bounced")
    assert states["held@elsewhere.org"] == ("smarthost", "held"), "the administrator decides"
    assert store.reroute_vanished({"postoffice"}, route).result(0) == [], "nothing left waiting"


@pytest.mark.sqlite_only
def test_finding_vanished_connectors_seeks_the_index_of_due_work(backend: SqliteBackend) -> None:
    db = sqlite3.connect(backend.path)
    plan = " ".join(
        str(row[3])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT MIN(connector) FROM recipients "
            "WHERE state IN ('queued', 'deferred') AND connector > ?",
            ("",),
        )
    )
    db.close()
    assert (
        "SEARCH recipients USING INDEX recipients_due (connector>?)" in plan
        or "INDEX recipients_state (state=? AND connector>?)" in plan  # schema 4: as cheap
    ), plan
