"""queue/track.py: messages by sender, Message-ID and recipient, kept off the accept commit.

On both stores a lookup finds every message, whether the indexer reached it or not; on
SQLite a message's own commit writes no tracking key, the pass does (and a crash before
it, a deletion, the newest message's rowid given again, or a renumbered file never makes
a message unfindable), and every lookup walks an index, never the queue. Real SQLite
files and a real PostgreSQL schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.queue import history, listing, migrations, ops, schema, track
from mailgate.queue.backend import Connection
from mailgate.queue.sqlite import SqliteBackend
from tests.support.stores import AnyBackend, sql

MESSAGE_ID = "<unique.1@example.test>"


@pytest.fixture
def conn(queue_backend: AnyBackend) -> Iterator[Connection]:
    """A writer connection on the test's store (autocommit between transactions)."""
    opened = queue_backend.connect()
    try:
        yield opened
    finally:
        opened.close()


def queue(conn: Connection, sender: str, *rcpts: str, header_id: str | None = None) -> str:
    """Insert one message in its own transaction, as the committer does; its queue id."""
    now = time.time()
    queue_id = new_queue_id(now)
    conn.begin()
    ops.insert_message(
        conn,
        NewMessage(
            queue_id=queue_id,
            sender=sender,
            recipients=tuple(NewRecipient(r, "postoffice") for r in rcpts),
            body=b"Subject: t\r\n\r\nbody\r\n",
            received_at=now,
            client="test [127.0.0.1]",
            header_message_id=header_id,
        ),
    )
    conn.commit()
    return queue_id


def index(conn: Connection) -> int:
    conn.begin()
    try:
        return track.index_new(conn)
    finally:
        conn.commit()


def found(conn: Connection, key: str) -> list[str]:
    return history.find(conn, key)


def listed(conn: Connection, **filters: str) -> list[str]:
    return [m.queue_id for m in listing.list_messages(conn, **filters)]


def test_a_message_is_found_by_each_key_before_and_after_the_pass_reaches_it(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    first = queue(conn, "a@x.test", "b@y.test", header_id=MESSAGE_ID)
    other = queue(conn, "c@x.test", "d@y.test")
    for indexed in (False, True):
        if indexed:
            index(conn)
        assert found(conn, MESSAGE_ID) == [first], indexed
        assert found(conn, MESSAGE_ID.strip("<>")) == [first], indexed
        assert found(conn, "a@x.test") == [first], indexed
        assert found(conn, "b@y.test") == [first], indexed
        assert found(conn, "nobody@x.test") == [], indexed
        assert listed(conn, sender="c@x.test") == [other], indexed
        assert listed(conn, recipient="b@y.test") == [first], indexed
        assert listed(conn, recipient="b@y.test", connector="smtp") == [], indexed
    later = queue(conn, "a@x.test", "b@y.test")  # above the mark again
    assert found(conn, "b@y.test") == [later, first], "newest first, both sides of it"
    assert listed(conn, sender="a@x.test") == [first, later]


@pytest.mark.sqlite_only
def test_the_message_commit_writes_no_tracking_key_and_the_pass_writes_them(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    queue_id = queue(conn, "a@x.test", "b@y.test", "c@y.test", header_id=MESSAGE_ID)
    assert sql(queue_backend, "SELECT COUNT(*) FROM track_keys") == [(0,)]
    assert index(conn) == 1 and index(conn) == 0
    keys = sql(queue_backend, "SELECT kind, key, message_id FROM track_keys ORDER BY 1, 2")
    assert keys == [
        ("i", MESSAGE_ID, queue_id),
        ("r", "b@y.test", queue_id),
        ("r", "c@y.test", queue_id),
        ("s", "a@x.test", queue_id),
    ]
    assert track.mark(conn) == (1, queue_id)


@pytest.mark.sqlite_only
def test_a_pass_that_never_committed_is_done_again(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    queue_id = queue(conn, "a@x.test", "b@y.test")
    conn.begin()
    assert track.index_new(conn) == 1
    conn.rollback()  # as a crash before the interchange's commit reached the disk
    assert track.mark(conn) == (0, "")
    assert found(conn, "b@y.test") == [queue_id], "found above the mark meanwhile"
    assert index(conn) == 1 and track.mark(conn) == (1, queue_id)


@pytest.mark.sqlite_only
def test_deleting_the_newest_message_lowers_the_mark_so_the_next_one_taking_its_rowid_is_found(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    """SQLite gives a new row the largest rowid plus one: once the newest message is gone,
    the next one gets its rowid, at or below a mark that did not move with it."""
    kept = queue(conn, "a@x.test", "b@y.test")
    newest = queue(conn, "a@x.test", "b@y.test")
    index(conn)
    assert track.mark(conn) == (2, newest)
    conn.begin()
    ops.purge_done(conn, time.time() + 1)  # nothing finished: nothing purged
    conn.execute("DELETE FROM recipients WHERE message_id = ?", (newest,))
    conn.execute("DELETE FROM messages WHERE id = ?", (newest,))
    conn.commit()
    assert track.mark(conn) == (1, kept)
    assert sql(queue_backend, "SELECT message_id FROM track_keys") == [(kept,)] * 2
    reused = queue(conn, "e@x.test", "f@y.test")
    assert sql(queue_backend, "SELECT rowid FROM messages WHERE id = ?", (reused,)) == [(2,)]
    assert found(conn, "f@y.test") == [reused]
    index(conn)
    assert found(conn, "f@y.test") == [reused] and track.mark(conn) == (2, reused)


@pytest.mark.sqlite_only
def test_purged_messages_leave_no_keys(queue_backend: AnyBackend, conn: Connection) -> None:
    gone = queue(conn, "a@x.test", "b@y.test", header_id=MESSAGE_ID)
    kept = queue(conn, "a@x.test", "c@y.test")
    index(conn)
    conn.begin()
    conn.execute("UPDATE messages SET done_at = 1 WHERE id = ?", (gone,))
    assert ops.purge_done(conn, 2.0) == 1
    conn.commit()
    keys = sql(queue_backend, "SELECT DISTINCT message_id FROM track_keys")
    assert keys == [(kept,)]
    assert found(conn, MESSAGE_ID) == [] and found(conn, "a@x.test") == [kept]


@pytest.mark.sqlite_only
def test_a_file_whose_rowids_changed_is_indexed_again_from_the_start(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    first = queue(conn, "a@x.test", "b@y.test")
    second = queue(conn, "a@x.test", "c@y.test")
    index(conn)
    conn.begin()  # what a VACUUM may do to a table without an INTEGER PRIMARY KEY
    conn.execute("UPDATE messages SET rowid = rowid + 10")
    conn.commit()
    assert index(conn) == 2
    assert track.mark(conn) == (12, second)
    assert found(conn, "a@x.test") == [second, first]
    assert sql(queue_backend, "SELECT COUNT(*) FROM track_keys") == [(4,)]


@pytest.mark.sqlite_only
def test_lookups_and_the_pass_walk_indexes_never_the_queue(
    queue_backend: AnyBackend, conn: Connection
) -> None:
    for n in range(30):
        queue(conn, f"s{n % 3}@x.test", f"r{n}@y.test", header_id=f"<{n}@x.test>")
    index(conn)
    queue(conn, "s0@x.test", "r0@y.test")
    plans: list[tuple[str, list[str]]] = []

    class Spy:
        dialect = conn.dialect

        def execute(self, statement: str, params: tuple[object, ...] = ()) -> object:
            if statement.lstrip().startswith(("SELECT", "INSERT")):
                rows = conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
                plans.append((statement, [str(row[3]) for row in rows]))
            return conn.execute(statement, params)

    spy = Spy()
    assert history.find(spy, "<7@x.test>")  # type: ignore[arg-type]
    assert len(history.find(spy, "s0@x.test")) == 11  # type: ignore[arg-type]
    assert history.find(spy, "r0@y.test")  # type: ignore[arg-type]
    assert listing.list_messages(spy, sender="s1@x.test")  # type: ignore[arg-type]
    assert listing.list_messages(spy, recipient="r1@y.test")  # type: ignore[arg-type]
    conn.begin()
    track.index_new(spy)  # type: ignore[arg-type]
    conn.commit()
    scans = [  # a scan of a subquery's own rows (at most BATCH of them) is no walk
        (s, step)
        for s, plan in plans
        for step in plan
        if step.startswith("SCAN") and not step.startswith("SCAN (subquery")
    ]
    assert plans and not scans, scans
    assert any("track_keys" in step for _, plan in plans for step in plan), plans


def test_an_older_sqlite_queue_is_indexed_by_the_upgrade(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    conn = backend.connect()
    try:
        queue_id = queue(conn, "a@x.test", "b@y.test", header_id=MESSAGE_ID)
    finally:
        conn.close()
    db = sqlite3.connect(backend.path)  # back to schema 4: the three indexes, no track_keys
    db.executescript(
        "DROP TABLE track_keys; DROP TRIGGER track_messages_deleted;"
        "DROP TRIGGER track_recipients_deleted;"
        "DELETE FROM meta WHERE key LIKE 'track_%'; UPDATE meta SET value = '4' "
        "WHERE key = 'schema';" + ";".join(schema.INDEXES)
    )
    db.close()
    backend.initialize()
    assert backend.schema_status() == migrations.SchemaStatus(migrations.CURRENT)
    assert sql(backend, "SELECT COUNT(*) FROM track_keys") == [(3,)]
    indexes = {row[0] for row in sql(backend, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert not indexes & {"messages_sender", "recipients_address", "messages_header_message_id"}
    conn = backend.connect()
    try:
        assert track.mark(conn) == (1, queue_id)
        assert found(conn, "b@y.test") == [queue_id]
    finally:
        conn.close()
