"""Versioned schema migrations on both stores: a queue file made by mailgate before them
(schema "1", tests/data/queue_schema1.sql) upgrades in place without loss; a newer schema
is refused and left alone; a PostgreSQL store is never upgraded by a start, only by
`mailgate db upgrade`, and the refusal names that command."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from mailgate.errors import StoreError
from mailgate.queue import migrations
from mailgate.queue.commit import DirectWriter
from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from tests.support.stores import pg_schema, sql

DUMP = Path(__file__).resolve().parents[1] / "data" / "queue_schema1.sql"
TABLES = ("meta", "messages", "bodies", "recipients", "attempts")


def schema1_file(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(DUMP.read_text())
    db.close()
    return path


def contents(path: Path) -> dict[str, list[Any]]:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
    finally:
        db.close()


def shape(path: Path) -> tuple[set[str], dict[str, list[str]]]:
    """Index names, and each table's columns in order."""
    db = sqlite3.connect(path)
    try:
        indexes = {
            str(r[0])
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
        columns = {t: [str(r[1]) for r in db.execute(f"PRAGMA table_info({t})")] for t in TABLES}
        return indexes, columns
    finally:
        db.close()


def test_a_schema_1_file_made_by_main_upgrades_in_place_without_loss(tmp_path: Path) -> None:
    path = schema1_file(tmp_path / "queue.db")
    before = contents(path)
    assert before["meta"] == [("schema", "1")]
    backend = SqliteBackend(path)
    assert backend.schema_status() == migrations.SchemaStatus(1)
    backend.initialize()  # what a start does: in place
    assert backend.schema_status().current and migrations.CURRENT == 5
    after = contents(path)
    meta = dict(after["meta"])
    assert meta.pop("schema") == "5"
    [(newest, newest_id)] = sql(
        backend, "SELECT rowid, id FROM messages ORDER BY rowid DESC LIMIT 1"
    )
    assert meta == {"track_through": str(newest), "track_through_id": newest_id}, (
        "the upgrade indexed every queued message for `mailgate track`"
    )
    for table in TABLES[1:]:
        assert after[table] == before[table], f"{table}: every row as it was"
    fresh = SqliteBackend(tmp_path / "fresh.db")
    fresh.initialize()
    assert shape(path) == shape(fresh.path), "one shape, whatever schema 1 it was"
    writer = DirectWriter(backend)  # and the upgraded queue works: the waiting mail is claimed
    try:
        store = QueueStore(backend, writer, clock=lambda: 1_700_000_200.0)
        claimed = store.claim("postoffice", "new:1:postoffice-1:1:", 10).result()
        assert {c.address for c in claimed} == {"a2@po1.net1.mx.test", "a5@po1.net1.mx.test"}
    finally:
        writer.close()


def test_an_older_shape_of_schema_1_is_brought_to_the_same_shape(tmp_path: Path) -> None:
    path = schema1_file(tmp_path / "queue.db")
    db = sqlite3.connect(path)
    db.executescript(
        "DROP INDEX messages_waiting; DROP INDEX messages_open; DROP INDEX recipients_address;"
        "ALTER TABLE messages DROP COLUMN delay_warned;"
    )
    db.close()
    SqliteBackend(path).initialize()
    fresh = SqliteBackend(tmp_path / "fresh.db")
    fresh.initialize()
    indexes, columns = shape(path)
    assert indexes == shape(fresh.path)[0]
    assert columns["messages"][-1] == "delay_warned"
    assert sorted(columns["messages"]) == sorted(shape(fresh.path)[1]["messages"])


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = schema1_file(tmp_path / "queue.db")
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    before = contents(path)
    with pytest.raises(StoreError, match=r"schema 99, newer .*`mailgate db status --config FILE`"):
        SqliteBackend(path).initialize()
    assert contents(path) == before


def test_postgres_is_never_upgraded_by_a_start_and_says_which_command_to_run() -> None:
    with pg_schema() as (_, url):
        backend = PostgresBackend(url)
        try:
            with pytest.raises(StoreError, match=r"no mailgate schema yet: create it with "
                               r"`mailgate db upgrade --config FILE`"):  # fmt: skip
                backend.initialize()
            assert backend.schema_status().found is None, "the start created nothing"
            status, steps = backend.upgrade()
            assert status.found is None and [s.version for s in steps] == [2, 3, 4, 5]
            backend.initialize()
            sql(backend, "UPDATE meta SET value = '1' WHERE key = 'schema'")
            with pytest.raises(StoreError, match=r"schema 1, this mailgate needs 5: run "
                               r"`mailgate db upgrade --config FILE`"):  # fmt: skip
                backend.initialize()
            assert backend.upgrade()[1], "an older one is upgraded by the command"
            sql(backend, "UPDATE meta SET value = '99' WHERE key = 'schema'")
            for attempt in (backend.initialize, backend.upgrade):
                with pytest.raises(StoreError, match="schema 99, newer than this mailgate"):
                    attempt()
            assert sql(backend, "SELECT value FROM meta WHERE key = 'schema'") == [("99",)]
        finally:
            backend.close()


def test_two_upgrades_at_once_apply_the_steps_once() -> None:
    with pg_schema() as (_, url):
        backends = [PostgresBackend(url), PostgresBackend(url)]
        results: list[Any] = []
        barrier = threading.Barrier(2)

        def upgrade(backend: PostgresBackend) -> None:
            barrier.wait()
            results.append(backend.upgrade()[1])

        threads = [threading.Thread(target=upgrade, args=(b,)) for b in backends]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for backend in backends:
            backend.close()
        assert sorted(len(steps) for steps in results) == [0, len(migrations.STEPS)]
