"""Queue administration on both stores (a real SQLite file, a PostgreSQL schema): every
admin op, in one transaction each, the active-recipient rule, the read queries of
`mailgate queue`, and the integrity check finding planted damage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from mailgate.control.local import LocalSurface
from mailgate.control.surface import command_table
from mailgate.dsn.generate import BounceGenerator, BounceResult
from mailgate.interchange.state import Connectors
from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome, new_queue_id
from mailgate.queue import admin, check, listing, revoke
from mailgate.queue.backend import Connection
from mailgate.queue.commit import DirectWriter
from mailgate.queue.dsn_source import ReportQueue
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.store import QueueStore
from mailgate.queue.wakeup import Wakeup
from tests.support.stores import AnyBackend

T = TypeVar("T")
OWNER = "mx.test:1:postoffice-1:1:"
SENDER = "alice@po1.net1.example.test"


def route(address: str) -> str | None:
    return "postoffice" if address.endswith("example.test") else "smarthost"


def message(
    *rcpts: tuple[str, str], sender: str = SENDER, at: float | None = None, body: bytes = b""
) -> NewMessage:
    now = time.time() if at is None else at
    return NewMessage(
        queue_id=new_queue_id(now),
        sender=sender,
        recipients=tuple(NewRecipient(address, connector) for address, connector in rcpts),
        body=body or b"Subject: admin test\r\nX-Tag: t1\r\n\r\nbody\r\n",
        received_at=now,
        client="test [127.0.0.1]",
    )


BOB = ("bob@po1.net1.example.test", "postoffice")
FRIEND = ("friend@elsewhere.org", "smarthost")


class Queue:
    """A real store, written the way `mailgate queue` writes: a DirectWriter."""

    def __init__(self, backend: AnyBackend) -> None:
        self.backend = backend
        self.writer = DirectWriter(self.backend)
        self.generator = ReportQueue(BounceGenerator("mx.test", "postmaster@mx.test", route))
        self.store = QueueStore(
            self.backend,
            self.writer,
            policy=RetryPolicy(60, 600, 7 * 86400),
            lease=30,
            on_done=self.generator,
        )
        self.db = backend.connect()  # autocommit: each statement on its own

    def run(self, op: Callable[[Connection], T]) -> T:
        return self.writer.submit("admin", op).result()

    def add(self, msg: NewMessage) -> str:
        self.store.enqueue(msg).result()
        return msg.queue_id

    def states(self, queue_id: str) -> dict[str, str]:
        return {
            address: state
            for address, state in self.db.execute(
                "SELECT address, state FROM recipients WHERE message_id = ?", (queue_id,)
            )
        }

    def rows(self, table: str, column: str, queue_id: str) -> int:
        sql = f"SELECT COUNT(*) FROM {table} WHERE {column} = ?"
        return int(self.db.execute(sql, (queue_id,)).fetchone()[0])

    def defer(self, connector: str) -> None:
        """Attempt every due recipient of `connector` once, with a temporary failure."""
        claims = self.store.claim(connector, OWNER, 100).result()
        now = time.time()
        outcomes = [Outcome(c, Disposition.DEFERRED, "451 4.3.0 later", now, now) for c in claims]
        self.store.record(outcomes, OWNER).result()

    def close(self) -> None:
        self.db.close()
        self.writer.close()


@pytest.fixture
def q(queue_backend: AnyBackend) -> Iterator[Queue]:
    queue = Queue(queue_backend)
    yield queue
    queue.close()


# --- hold, release, retry ------------------------------------------------------------------------
def test_hold_keeps_recipients_from_claims_and_release_makes_them_due(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    held = q.run(lambda c: admin.hold(c, qid, time.time()))
    assert (held.count, held.connectors, held.skipped) == (2, ("postoffice", "smarthost"), 0)
    assert set(q.states(qid).values()) == {"held"}
    assert q.store.claim("postoffice", OWNER, 10).result() == []
    assert q.store.claim("smarthost", OWNER, 10).result() == []
    assert q.run(lambda c: admin.hold(c, qid, time.time())).count == 0, "nothing left to hold"

    now = time.time()
    released = q.run(lambda c: admin.release(c, qid.lower(), now))  # any case of the id
    assert released.count == 2 and set(q.states(qid).values()) == {"queued"}
    assert {r[0] for r in q.db.execute("SELECT due_at FROM recipients")} == {now}
    assert len(q.store.claim("postoffice", OWNER, 10).result()) == 1


def test_hold_and_release_one_connector(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    other = q.add(message(FRIEND))
    held = q.run(lambda c: admin.hold(c, qid, time.time(), "smarthost"))
    assert held.count == 1 and held.connectors == ("smarthost",)
    assert q.states(qid) == {BOB[0]: "queued", FRIEND[0]: "held"}
    everything = q.run(lambda c: admin.hold(c, None, time.time(), "smarthost"))
    assert everything.count == 1 and everything.connectors == ("smarthost",)
    assert q.states(other) == {FRIEND[0]: "held"}
    assert q.states(qid)[BOB[0]] == "queued", "--connector smarthost leaves the postoffice alone"
    assert q.run(lambda c: admin.release(c, None, time.time())).count == 2


def test_retry_makes_deferred_recipients_due_now(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    q.defer("postoffice")
    q.defer("smarthost")
    assert set(q.states(qid).values()) == {"deferred"}
    assert q.store.claim("postoffice", OWNER, 10).result() == [], "not due before its retry"

    only = q.run(lambda c: admin.retry(c, None, time.time(), "smarthost"))
    assert only.count == 1 and only.connectors == ("smarthost",)
    assert q.store.claim("postoffice", OWNER, 10).result() == [], "other connectors untouched"

    result = q.run(lambda c: admin.retry(c, qid, time.time()))
    assert result.count == 1 and result.connectors == ("postoffice",)
    [claim] = q.store.claim("postoffice", OWNER, 10).result()
    assert claim.queue_id == qid and claim.attempts == 2


def test_release_of_one_message_frees_its_quarantined_recipients(q: Queue) -> None:
    qid = q.add(message(BOB))
    other = q.add(message(BOB))
    q.db.execute("UPDATE recipients SET state = 'quarantined', internal_failures = 3")
    assert q.run(lambda c: admin.release(c, None, time.time())).count == 0, (
        "a bulk release leaves poison messages alone"
    )
    assert q.run(lambda c: admin.release(c, qid, time.time())).count == 1
    assert q.states(qid) == {BOB[0]: "queued"} and q.states(other) == {BOB[0]: "quarantined"}
    row = q.db.execute(
        "SELECT internal_failures FROM recipients WHERE message_id = ?", (qid,)
    ).fetchone()
    assert row[0] == 0, "a fresh internal-failure budget"


def test_unknown_message_is_an_error(q: Queue) -> None:
    for op in (admin.hold, admin.release, admin.retry):
        with pytest.raises(admin.NoSuchMessage, match="no message NOPE"):
            q.run(lambda c, op=op: op(c, "NOPE", time.time()))
    with pytest.raises(admin.NoSuchMessage):
        q.run(lambda c: admin.delete(c, "NOPE", time.time()))


# --- the active-recipient rule -------------------------------------------------------------------
def test_a_leased_recipient_is_never_changed_under_its_thread(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    [claim] = q.store.claim("postoffice", OWNER, 10).result()  # BOB is being delivered
    before = q.states(qid)
    for op in (
        lambda c: admin.hold(c, qid, time.time()),
        lambda c: admin.delete(c, qid, time.time(), ndr=True, on_done=q.generator),
        lambda c: admin.return_to_sender(c, qid, time.time(), q.generator),
    ):
        with pytest.raises(admin.LeaseHeld) as refused:
            q.run(op)
        assert refused.value.owner == OWNER and refused.value.address == BOB[0]
        assert OWNER in str(refused.value) and "nothing was changed" in str(refused.value)
        assert q.states(qid) == before, "refused as a whole: FRIEND was not changed either"
    assert q.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1, "no bounce"

    # The other connector's recipients of the same message can be held on their own.
    assert q.run(lambda c: admin.hold(c, qid, time.time(), "smarthost")).count == 1
    # A bulk hold leaves the leased recipient alone and says so.
    other = q.add(message(BOB))
    bulk = q.run(lambda c: admin.hold(c, None, time.time()))
    assert (bulk.count, bulk.skipped) == (1, 1)
    assert q.states(qid)[BOB[0]] == "active" and q.states(other) == {BOB[0]: "held"}

    # The thread records its outcome as usual; then the message can be deleted.
    now = time.time()
    recorded = q.store.record([Outcome(claim, Disposition.DELIVERED, "250", now, now)], OWNER)
    assert not recorded.result()[0].lease_lost
    assert q.run(lambda c: admin.delete(c, qid, time.time())).closed == 1


def test_an_expired_lease_is_free_and_its_late_outcome_is_lost(q: Queue) -> None:
    qid = q.add(message(BOB))
    [claim] = q.store.claim("postoffice", OWNER, 10).result()
    q.db.execute("UPDATE recipients SET lease_until = ?", (time.time() - 1,))
    assert q.run(lambda c: admin.hold(c, qid, time.time())).count == 1
    row = q.db.execute("SELECT state, released, lease_owner FROM recipients").fetchone()
    assert row == ("held", 1, None), "flagged: the old thread may have delivered it"
    now = time.time()
    late = q.store.record([Outcome(claim, Disposition.DEFERRED, "451", now, now)], OWNER)
    assert late.result()[0].lease_lost and q.states(qid) == {BOB[0]: "held"}


# --- an administrator's command takes effect on a recipient being delivered ----------------------
def test_hold_revokes_the_lease_of_a_recipient_being_delivered(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    [claim] = q.store.claim("postoffice", OWNER, 10).result()
    held = q.run(lambda c: admin.hold(c, qid, time.time(), revoke_leases=True))
    assert held.count == 2 and q.states(qid) == {BOB[0]: "held", FRIEND[0]: "held"}
    [revoked] = held.revoked
    assert (revoked.recipient_id, revoked.address, revoked.owner) == (
        claim.recipient_id, BOB[0], OWNER,
    )  # fmt: skip
    assert revoked.thread == "postoffice-1" and revoked.queue_id == qid
    row = q.db.execute("SELECT released, lease_owner FROM recipients WHERE address = ?", (BOB[0],))
    assert row.fetchone() == (1, None), "flagged: the attempt in flight may still deliver it"

    now = time.time()
    late = q.store.record([Outcome(claim, Disposition.DEFERRED, "451 x", now, now)], OWNER)
    assert late.result()[0].lease_lost, "the attempt's outcome is discarded"
    assert q.states(qid)[BOB[0]] == "held"
    [(rid, disposition, reply)] = q.run(lambda c: revoke.attempts_since(c, revoked))
    assert (rid, disposition, reply) == (claim.recipient_id, "deferred", "451 x")


def test_a_delivery_that_completed_after_its_lease_was_revoked_is_not_repeated(q: Queue) -> None:
    """The attempt in flight delivered after all: the recipient is delivered, not held, so
    releasing the message cannot send it a second time."""
    qid = q.add(message(BOB))
    [claim] = q.store.claim("postoffice", OWNER, 10).result()
    q.run(lambda c: admin.hold(c, qid, time.time(), revoke_leases=True))
    now = time.time()
    late = q.store.record([Outcome(claim, Disposition.DELIVERED, "250 ok", now, now)], OWNER)
    [recorded] = late.result()
    assert not recorded.lease_lost and recorded.message_done
    assert q.states(qid) == {BOB[0]: "delivered"}
    assert q.run(lambda c: admin.release(c, qid, time.time())).count == 0


def test_take_over_freezes_a_message_being_delivered_for_delete_or_return(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    idle = q.add(message(BOB))
    assert q.run(lambda c: admin.take_over(c, idle, time.time())) == (), "no lease: no change"
    assert q.states(idle) == {BOB[0]: "queued"}
    [claim] = q.store.claim("smarthost", OWNER, 10).result()
    [revoked] = q.run(lambda c: admin.take_over(c, qid.lower(), time.time()))
    assert revoked.address == FRIEND[0]
    assert q.states(qid) == {BOB[0]: "held", FRIEND[0]: "held"}, "nothing else is claimed"
    result = q.run(lambda c: admin.return_to_sender(c, qid, time.time(), q.generator))
    assert result.closed == 2 and result.finished
    now = time.time()
    late = q.store.record([Outcome(claim, Disposition.DELIVERED, "250 ok", now, now)], OWNER)
    assert late.result()[0].lease_lost, "too late: the message was returned"


def test_a_late_outcome_for_a_deleted_message_leaves_no_orphan(q: Queue) -> None:
    qid = q.add(message(FRIEND))
    [claim] = q.store.claim("smarthost", OWNER, 10).result()
    q.run(lambda c: admin.take_over(c, qid, time.time()))
    q.run(lambda c: admin.delete(c, qid, time.time()))
    now = time.time()
    late = q.store.record([Outcome(claim, Disposition.DEFERRED, "451", now, now)], OWNER)
    assert late.result()[0].lease_lost
    assert check.check_store(q.db, time.time()) == [], "no attempt row without its recipient"


# --- delete and return ---------------------------------------------------------------------------
def test_delete_removes_every_row_and_the_body(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    keep = q.add(message(BOB))
    q.defer("smarthost")
    result = q.run(lambda c: admin.delete(c, qid, time.time()))
    assert (result.closed, result.finished, result.removed, result.done) == (2, False, True, None)
    for table, column in (
        ("messages", "id"),
        ("recipients", "message_id"),
        ("attempts", "message_id"),
        ("bodies", "message_id"),
    ):
        assert q.rows(table, column, qid) == 0, table
    assert q.rows("messages", "kind = 'normal' AND sender", SENDER) == 1, "no bounce"
    assert q.states(keep) == {BOB[0]: "queued"}


def test_delete_with_ndr_queues_the_bounce_first(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    now = time.time()
    done = q.run(lambda c: admin.delete(c, qid, now, ndr=True, on_done=q.generator))
    assert done.finished and done.removed and isinstance(done.done, BounceResult)
    bounce = done.done
    assert bounce.recipient == SENDER and set(bounce.failed) == {BOB[0], FRIEND[0]}
    assert bounce.bounce_id is not None
    assert q.rows("messages", "id", qid) == 0 and q.rows("recipients", "message_id", qid) == 0
    assert q.states(bounce.bounce_id) == {SENDER: "queued"}
    body = bytes(q.db.execute("SELECT data FROM bodies").fetchone()[0])
    assert b"554 5.7.0 deleted by the administrator" in body and b"X-Tag: t1" in body


def test_return_to_sender_bounces_open_recipients_only(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    [claim] = q.store.claim("postoffice", OWNER, 10).result()
    now = time.time()
    q.store.record([Outcome(claim, Disposition.DELIVERED, "250 ok", now, now)], OWNER).result()
    q.run(lambda c: admin.hold(c, qid, time.time()))
    result = q.run(lambda c: admin.return_to_sender(c, qid, time.time(), q.generator))
    assert (result.closed, result.finished, result.removed) == (1, True, False)
    assert isinstance(result.done, BounceResult) and result.done.failed == (FRIEND[0],)
    assert q.states(qid) == {BOB[0]: "delivered", FRIEND[0]: "bounced"}
    reply = q.db.execute(
        "SELECT last_reply FROM recipients WHERE address = ?", (FRIEND[0],)
    ).fetchone()[0]
    assert reply == admin.RETURNED_REPLY
    assert q.rows("bodies", "message_id", qid) == 0, "a finished message keeps no body"
    assert q.db.execute("SELECT done_at FROM messages WHERE id = ?", (qid,)).fetchone()[0]
    with pytest.raises(admin.NothingToDo, match="every recipient is final"):
        q.run(lambda c: admin.return_to_sender(c, qid, time.time(), q.generator))


def test_return_of_a_quarantined_message(q: Queue) -> None:
    qid = q.add(message(BOB))
    q.db.execute("UPDATE recipients SET state = 'quarantined'")
    result = q.run(lambda c: admin.return_to_sender(c, qid, time.time(), q.generator))
    assert isinstance(result.done, BounceResult) and result.done.bounce_id is not None


def test_a_failing_report_leaves_the_message_untouched(q: Queue) -> None:
    """One transaction per command: a failure half-way leaves nothing behind."""
    qid = q.add(message(BOB, FRIEND))

    def broken(conn: Connection, queue_id: str, now: float) -> Any:
        q.generator(conn, queue_id, now)  # the bounce is inserted, then...
        raise RuntimeError("disk on fire")

    before = q.states(qid)
    with pytest.raises(RuntimeError):
        q.run(lambda c: admin.delete(c, qid, time.time(), ndr=True, on_done=broken))
    with pytest.raises(RuntimeError):
        q.run(lambda c: admin.return_to_sender(c, qid, time.time(), broken))
    assert q.states(qid) == before
    assert q.rows("bodies", "message_id", qid) == 1
    assert q.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1, "no bounce left"


# --- reads ---------------------------------------------------------------------------------------
def test_list_filters_and_limit(q: Queue) -> None:
    now = time.time()
    old = q.add(message(BOB, FRIEND, at=now - 7200))
    mid = q.add(message(FRIEND, sender="other@elsewhere.org", at=now - 600))
    new = q.add(message(BOB, at=now - 5))
    q.defer("smarthost")
    q.run(lambda c: admin.hold(c, new, time.time()))
    done = q.add(message(BOB, at=now - 1))
    claims = q.store.claim("postoffice", OWNER, 10).result()  # old's BOB stays active
    [claim] = [c for c in claims if c.queue_id == done]
    q.store.record([Outcome(claim, Disposition.DELIVERED, "250", now, now)], OWNER).result()

    def ids(**kw: Any) -> list[str]:
        return [m.queue_id for m in listing.list_messages(q.db, **kw)]

    assert ids() == [old, mid, new], "oldest first; the finished message is left out"
    assert ids(limit=2) == [old, mid]
    assert ids(connector="smarthost") == [old, mid]
    assert ids(state="deferred") == [old, mid]
    assert ids(state="deferred", connector="smarthost") == [old, mid]
    assert ids(state="held") == [new]
    assert ids(state="active") == [old]
    assert ids(state="delivered") == [done], "finished messages when asked for"
    assert ids(received_before=now - 300) == [old, mid]
    assert ids(sender="other@elsewhere.org") == [mid]
    assert ids(recipient=FRIEND[0]) == [old, mid]
    assert ids(recipient=BOB[0], state="held") == [new]
    [first] = listing.list_messages(q.db, limit=1)
    assert first.sender == SENDER and first.size > 0 and first.done_at is None
    by_address = {r.address: r for r in first.recipients}
    assert by_address[FRIEND[0]].state == "deferred"
    assert by_address[FRIEND[0]].last_reply == "451 4.3.0 later"
    assert by_address[BOB[0]].state == "active" and by_address[BOB[0]].lease_owner == OWNER


def test_list_pages_by_keyset_after_the_last_id_shown(q: Queue) -> None:
    """The dashboard's paging: each page starts after the last queue id of the one before,
    with every filter still applied, and the pages together are the whole list."""
    now = time.time()
    added = [q.add(message(BOB if n % 3 else FRIEND, at=now - 100 + n)) for n in range(10)]

    def page(after: str | None, **kw: Any) -> list[str]:
        return [m.queue_id for m in listing.list_messages(q.db, limit=4, after=after, **kw)]

    first = page(None)
    second = page(first[-1])
    third = page(second[-1])
    assert first + second + third == added and len(third) == 2
    assert page(added[-1]) == []
    via_bob = [a for n, a in enumerate(added) if n % 3]
    assert page(via_bob[2], connector="postoffice") == via_bob[3:7]
    assert page(via_bob[2], recipient=BOB[0]) == via_bob[3:7]


@pytest.mark.sqlite_only
def test_list_queries_walk_indexes(q: Queue) -> None:
    plans: list[str] = []

    class Spy:
        dialect = q.db.dialect

        def execute(self, sql: str, params: Any = ()) -> Any:
            if sql.startswith("SELECT m.id"):
                plan = q.db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                plans.append(" ".join(str(row[3]) for row in plan))
            return q.db.execute(sql, params)

    listing.list_messages(Spy(), recipient="x@y")
    listing.list_messages(Spy(), state="deferred", connector="smarthost")
    listing.list_messages(Spy(), state="active")
    listing.list_messages(Spy())
    listing.list_messages(Spy(), after="0", limit=50)
    by_address, due, lease, walk, keyset = plans
    # the messages with that recipient from track_keys (queue/track.py), then their own
    assert "track_keys USING PRIMARY KEY (kind=? AND key=?)" in by_address, by_address
    assert "recipients_message" in by_address and "SCAN" not in by_address, by_address
    # recipients_state (schema 4) serves both as well: a covering seek by state and connector
    assert "recipients_due" in due or "INDEX recipients_state (state=? AND connector=?)" in due, due
    assert "recipients_lease" in lease or "INDEX recipients_state (state=?)" in lease, lease
    assert "INDEX sqlite_autoindex_messages_1" in walk and "TEMP B-TREE" not in walk, walk
    assert "sqlite_autoindex_messages_1 (id>?)" in keyset and "TEMP B-TREE" not in keyset, keyset


def test_summary_counts_by_age_bucket_and_state(q: Queue) -> None:
    now = time.time()
    q.add(message(BOB, FRIEND, at=now - 60))  # 1 minute: the 5m bucket
    q.add(message(FRIEND, at=now - 30 * 60))  # 30 minutes: the 40m bucket
    q.add(message(FRIEND, at=now - 2 * 86400))  # 2 days: 1280m+
    q.defer("smarthost")
    shape = listing.queue_shape(q.db, time.time())
    assert list(shape) == ["postoffice", "smarthost"]
    assert shape["postoffice"].total == 1 and shape["postoffice"].ages["5m"] == 1
    smart = shape["smarthost"]
    assert smart.total == 3
    assert (smart.ages["5m"], smart.ages["40m"], smart.ages["1280m+"]) == (1, 1, 1)
    assert sum(smart.ages.values()) == 3
    assert smart.states["deferred"] == 3
    assert smart.states["queued"] == 0 and smart.states["held"] == 0


def test_check_passes_on_a_healthy_store_and_finds_planted_damage(q: Queue) -> None:
    qid = q.add(message(BOB, FRIEND))
    q.defer("postoffice")
    now = time.time()
    assert check.integrity_check(q.db) == []
    assert check.check_store(q.db, now) == []

    q.db.execute(
        "INSERT INTO recipients (message_id, address, connector, state, due_at, updated_at) "
        "VALUES ('GHOST', 'lost@x.test', 'postoffice', 'queued', 0, 0)"
    )
    q.db.execute("INSERT INTO bodies (message_id, data) VALUES ('NOBODY', ?)", (b"\x00",))
    q.db.execute(
        "INSERT INTO attempts (recipient_id, message_id, started_at, finished_at, disposition, "
        "reply) VALUES (9999, 'GHOST', 0, 0, 'deferred', '451')"
    )
    stripped = q.add(message(BOB))
    q.db.execute("DELETE FROM bodies WHERE message_id = ?", (stripped,))
    q.store.claim("smarthost", "gone:1:smarthost-1:1:", 10).result()
    q.db.execute("UPDATE recipients SET lease_until = ? WHERE state = 'active'", (now - 3600,))

    found = {p.kind: p for p in check.check_store(q.db, time.time())}
    assert set(found) == {
        "orphan-recipients",
        "orphan-attempts",
        "missing-body",
        "orphan-bodies",
        "expired-leases",
    }
    assert found["orphan-recipients"].examples == ("GHOST <lost@x.test>",)
    assert found["orphan-bodies"].examples == ("NOBODY",)
    assert found["missing-body"].examples == (stripped,)
    assert found["expired-leases"].count == 1
    assert found["expired-leases"].examples == (
        f"{qid} <{FRIEND[0]}> leased to gone:1:smarthost-1:1:",
    )
    assert check.check_store(q.db, now, lease_grace=7200)  # still the other problems
    kinds = {p.kind for p in check.check_store(q.db, now, lease_grace=7200)}
    assert "expired-leases" not in kinds, "a lease just past expiry is the scheduler's to release"


# --- the control command -------------------------------------------------------------------------
def test_wake_control_command_wakes_one_connector_or_all() -> None:
    wakeup = Wakeup()
    cleared: list[tuple[list[str], str]] = []

    def clear_down(names: list[str], by: str) -> list[str]:
        cleared.append((names, by))
        return names[-1:]

    delivery = SimpleNamespace(
        connectors=Connectors(["postoffice", "smarthost"]), wakeup=wakeup, clear_down=clear_down
    )
    surface = LocalSurface(None, None, None, delivery)  # type: ignore[arg-type]  # stand-ins
    wake = command_table(surface)["wake"]
    po, smart = wakeup.generation("postoffice"), wakeup.generation("smarthost")
    assert wake({"connector": "smarthost"}) == {
        "woken": ["smarthost"],
        "down_cleared": ["smarthost"],
    }
    assert (wakeup.generation("postoffice"), wakeup.generation("smarthost")) == (po, smart + 1)
    assert wake({"clear_down": False, "by": "x"})["woken"] == ["postoffice", "smarthost"]
    assert (wakeup.generation("postoffice"), wakeup.generation("smarthost")) == (po + 1, smart + 2)
    assert cleared == [(["smarthost"], "mailgate ctl wake")], "only when asked to clear"
    assert wake({"by": "mailgate queue retry"})["down_cleared"] == ["smarthost"]
    assert cleared[-1] == (["postoffice", "smarthost"], "mailgate queue retry")
    assert (wakeup.generation("postoffice"), wakeup.generation("smarthost")) == (po + 2, smart + 3)
    with pytest.raises(KeyError, match="no connector 'nope'"):
        wake({"connector": "nope"})
