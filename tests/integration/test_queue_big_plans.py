"""A big queue (issue 14.6): what runs every second or two must not read the whole queue.

With a million messages queued, three reads did: the scheduler counted every due
recipient (and joined each to its message) on every tick, about a third of a core;
the counts of `ctl status`, the dashboard and the metrics grouped the whole recipients
table, 1.2 s; and ending leases (every tick, and at start) scanned the table in rowid
order, because their ORDER BY r.id made SQLite prefer that to the partial lease index.
And `queue list --state held` (or quarantined, delivered) walked every message to test
each one's recipients, 0.6 s for none at a million.
Each test runs the real query on a real SQLite file holding a few thousand recipients
of every state (most of them finished, as a week of kept history leaves them) and
checks the plan SQLite chose: every table it touches is searched through an index,
never scanned. Plans, not timings: a test never measures speed (bench/big_queue.py does).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.queue import listing, ops
from mailgate.queue.leases import end_leases
from mailgate.queue.reader import QueueReader
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend, SqliteConnection

MESSAGES = 3000
STATES = ("delivered",) * 6 + ("bounced", "queued", "deferred", "held", "active", "quarantined")
NOW = 1_800_000_000.0


class Recording:
    """A connection that remembers every statement run through it."""

    def __init__(self, conn: SqliteConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect
        self.statements: list[tuple[str, Sequence[Any]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.statements.append((sql, params))
        return self.conn.execute(sql, params)

    def begin(self) -> None:
        self.conn.begin()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

    def plans(self) -> list[tuple[str, list[str]]]:
        """Each SELECT or UPDATE recorded, with the plan SQLite chooses for it."""
        found = []
        for sql, params in self.statements:
            if re.match(r"\s*(SELECT|UPDATE)", sql, re.I):
                plan = self.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                found.append((sql, [str(row[3]) for row in plan]))
        return found


def scans(plans: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    """The steps that read a whole table or index (SQLite says SCAN; SEARCH is a seek)."""
    return [(sql, step) for sql, plan in plans for step in plan if step.startswith("SCAN")]


@pytest.fixture(scope="module")
def queue_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MESSAGES messages of one recipient each, their states cycling through STATES."""
    path = tmp_path_factory.mktemp("big") / "queue.db"
    backend = SqliteBackend(path, durable=False)
    backend.initialize()
    conn = backend.connect()
    state = itertools.cycle(STATES)
    try:
        conn.begin()
        for n in range(MESSAGES):
            at = NOW - MESSAGES + n
            queue_id = new_queue_id(at)
            connector = ("postoffice", "smtp")[(n // len(STATES)) % 2]
            ops.insert_message(
                conn,
                NewMessage(
                    queue_id=queue_id,
                    sender="s@example.org",
                    recipients=(NewRecipient(f"r{n}@x.test", connector),),
                    body=b"Subject: x\r\n\r\nbody\r\n",
                    received_at=at,
                    client="test",
                ),
            )
            conn.execute(
                "UPDATE recipients SET state = ?, lease_owner = 'node:1:t:1:', "
                "lease_until = ?, due_at = ? WHERE message_id = ?",
                (next(state), NOW + 30 * ((n // len(STATES)) % 3 - 1), NOW - 10, queue_id),
            )
        conn.commit()
    finally:
        conn.close()
    return path


@pytest.fixture
def recording(queue_file: Path) -> Iterator[Recording]:
    conn = Recording(SqliteBackend(queue_file).connect())
    try:
        yield conn
    finally:
        conn.close()


def test_status_counts_read_the_state_index_not_the_whole_recipients_table(
    recording: Recording,
) -> None:
    counts = QueueReader(recording).counts()  # type: ignore[arg-type]
    per = MESSAGES // len(STATES)
    assert counts.by_state[("postoffice", "queued")] + counts.by_state[("smtp", "queued")] == per
    assert not any(state in ("delivered", "bounced") for _, state in counts.by_state)
    assert set(counts.oldest_waiting) == {"postoffice", "smtp"}
    assert min(counts.oldest_waiting.values()) < NOW - MESSAGES + len(STATES)
    plans = recording.plans()
    assert plans and not scans(plans), plans
    assert any("COVERING INDEX recipients_state" in s for _, p in plans for s in p), plans


def test_the_oldest_open_message_of_a_connector_is_its_lowest_queue_id(
    recording: Recording,
) -> None:
    counts = QueueReader(recording).counts()  # type: ignore[arg-type]
    for connector in ("postoffice", "smtp"):
        row = recording.conn.execute(
            "SELECT MIN(m.received_at) FROM recipients r JOIN messages m ON m.id = r.message_id "
            "WHERE r.connector = ? AND r.state NOT IN ('delivered', 'bounced')",
            (connector,),
        ).fetchone()
        assert counts.oldest_waiting[connector] == row[0]


def test_the_scheduler_asks_whether_mail_is_due_with_seeks_not_a_count(
    recording: Recording,
) -> None:
    reader = QueueReader(recording)  # type: ignore[arg-type]
    assert reader.has_due("postoffice", NOW) and reader.has_due("smtp", NOW)
    assert not reader.has_due("nowhere", NOW)
    plans = recording.plans()
    assert plans and not scans(plans), plans
    assert all(all(step.startswith("SEARCH") for step in plan) for _, plan in plans), plans


@pytest.mark.parametrize(
    "how",
    [
        pytest.param({"expired_only": True}, id="expired"),
        pytest.param({"owner_prefix": "node:1:"}, id="one-owner"),
        pytest.param({}, id="all"),
    ],
)
def test_ending_leases_searches_the_active_recipients_instead_of_scanning_the_table(
    queue_file: Path, how: dict[str, Any]
) -> None:
    conn = Recording(SqliteBackend(queue_file, durable=False).connect())
    try:
        conn.begin()
        ended = end_leases(
            conn,  # type: ignore[arg-type]
            NOW,
            "test",
            max_internal=5,
            policy=RetryPolicy(lifetime=1e12),
            **how,
        )
        plans = conn.plans()
        conn.rollback()
    finally:
        conn.close()
    assert ended.count > 0
    assert plans and not scans(plans), plans


@pytest.mark.parametrize("state", ["held", "quarantined", "deferred", "active", "delivered"])
def test_queue_list_by_state_finds_the_recipients_first_instead_of_walking_every_message(
    recording: Recording, state: str
) -> None:
    listed = QueueReader(recording).list_messages(state=state, limit=10)  # type: ignore[arg-type]
    assert listed and all(any(r.state == state for r in m.recipients) for m in listed), (
        "each listed message has a recipient in that state"
    )
    plans = [(sql, plan) for sql, plan in recording.plans() if sql.startswith("SELECT m.id")]
    assert plans and not scans(plans), plans


def test_queue_list_by_a_connector_with_few_recipients_finds_them_first(
    recording: Recording,
) -> None:
    listed = QueueReader(recording).list_messages(connector="smtp", limit=10)  # type: ignore[arg-type]
    assert len(listed) == 10 and all(
        any(r.connector == "smtp" and r.state not in ("delivered", "bounced") for r in m.recipients)
        for m in listed
    )
    plans = [(sql, plan) for sql, plan in recording.plans() if sql.startswith("SELECT m.id")]
    assert plans and not scans(plans), plans


@pytest.mark.parametrize("filters", [{"connector": "smtp"}, {"state": "queued"}])
def test_queue_list_walks_the_messages_when_many_match_and_lists_the_same(
    recording: Recording, monkeypatch: pytest.MonkeyPatch, filters: dict[str, str]
) -> None:
    reader = QueueReader(recording)  # type: ignore[arg-type]
    few = [m.queue_id for m in reader.list_messages(limit=20, **filters)]  # type: ignore[arg-type]
    monkeypatch.setattr(listing, "FEW", 10)  # as if a big queue: more than FEW match
    many = [m.queue_id for m in reader.list_messages(limit=20, **filters)]  # type: ignore[arg-type]
    assert len(few) == 20 and many == few
    walked = [sql for sql, _ in recording.statements if sql.startswith("SELECT m.id")][-1]
    assert "EXISTS" in walked, walked
