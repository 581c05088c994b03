"""`mailgate db status|upgrade|migrate-from-sqlite` as an operator runs them, against a
PostgreSQL schema of the test's own and SQLite files made by mailgate before numbered
migrations (tests/data/queue_schema1.sql). The URL carries a password (the test server
trusts loopback and ignores it): it must never be printed nor written to the events."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.queue.lock import DataDirLock
from mailgate.queue.postgres import PostgresBackend
from tests.support.process import DEFAULT_CONFIG, Mailgate
from tests.support.stores import pg_schema, sql

DUMP = Path(__file__).resolve().parents[1] / "data" / "queue_schema1.sql"
SECRET = "s3cret-pw"


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{SECRET}@{host}"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Mailgate, PostgresBackend]]:
    """A data directory whose configuration names a fresh PostgreSQL schema, and a backend
    on that schema to look inside."""
    with pg_schema() as (_, url):
        url = with_password(url)
        mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + f'\n[queue]\nurl = "{url}"\n')
        backend = PostgresBackend(url)
        try:
            yield mg, backend
        finally:
            backend.close()


def old_node(directory: Path) -> Path:
    """A single node's data directory holding a schema-1 queue file."""
    path = directory / "queue" / "queue.db"
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(DUMP.read_text())
    db.close()
    return path


def no_secret(mg: Mailgate, *outputs: str) -> None:
    written = [p.read_text(errors="replace") for p in mg.log_dir.glob("*") if p.is_file()]
    for text in (*outputs, *written):
        assert SECRET not in text


def test_status_and_upgrade_create_the_schema_once(
    node: tuple[Mailgate, PostgresBackend],
) -> None:
    mg, backend = node
    status = mg.cli("db", "status")
    assert status.returncode == 1, status.stderr
    assert "no queue schema yet" in status.stdout and "postgres:***@" in status.stdout
    upgrade = mg.cli("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "schema none -> 5" in upgrade.stdout
    again = mg.cli("db", "upgrade")
    assert again.returncode == 0 and "up to date: nothing to do" in again.stdout
    status = mg.cli("db", "status")
    assert status.returncode == 0 and "schema 5: up to date" in status.stdout
    [event] = mg.events(4060)
    assert event["fields"]["new"] == 5 and "***" in event["fields"]["store"]
    backend.initialize()  # a start would now accept it
    no_secret(mg, status.stdout, status.stderr, upgrade.stdout, upgrade.stderr)


def test_a_start_on_a_postgres_store_without_its_schema_is_refused_naming_the_command(
    node: tuple[Mailgate, PostgresBackend],
) -> None:
    mg, _ = node
    mg.start("--single-process", wait=False)
    assert mg.proc is not None
    assert mg.proc.wait(30) != 0
    assert "mailgate db upgrade --config FILE" in mg.stderr()
    no_secret(mg, mg.stderr())


def test_migrate_from_sqlite_moves_everything_once(
    node: tuple[Mailgate, PostgresBackend], tmp_path: Path
) -> None:
    mg, backend = node
    assert mg.cli("db", "upgrade").returncode == 0
    source = old_node(tmp_path / "old")
    holder = DataDirLock(tmp_path / "old", source)
    holder.acquire()  # a service runs there: refused, nothing moved
    try:
        refused = mg.cli("db", "migrate-from-sqlite", str(tmp_path / "old"))
    finally:
        holder.release()
    assert refused.returncode == 1 and "already running" in refused.stderr
    assert sql(backend, "SELECT COUNT(*) FROM messages") == [(0,)]

    moved = mg.cli("db", "migrate-from-sqlite", str(tmp_path / "old"))
    assert moved.returncode == 0, moved.stderr
    assert "4 messages (3 open), 3 bodies, 6 recipients, 3 attempts; 1 lease(s)" in moved.stdout
    states = dict(sql(backend, "SELECT address, state FROM recipients"))
    assert states == {
        "a1@po1.net1.mx.test": "delivered",
        "far1@elsewhere.org": "delivered",
        "a2@po1.net1.mx.test": "deferred",
        "far3@elsewhere.org": "held",
        "a4@po1.net1.mx.test": "queued",  # its lease, of the stopped service, given back
        "a5@po1.net1.mx.test": "queued",
    }
    history = sql(
        backend,
        "SELECT r.address, a.disposition, a.reply FROM attempts a "
        "JOIN recipients r ON r.id = a.recipient_id ORDER BY a.id",
    )
    assert history == [
        ("a1@po1.net1.mx.test", "delivered", "250 2.0.0 delivered"),
        ("a2@po1.net1.mx.test", "deferred", "451 4.2.2 mailbox full"),
        ("far1@elsewhere.org", "delivered", "250 ok"),
    ], "each attempt with its recipient"
    [(released,)] = sql(backend, "SELECT released FROM recipients WHERE address LIKE 'a4@%'")
    assert released == 1, "a given-back lease may have been delivered: flagged"
    bodies = sql(backend, "SELECT data FROM bodies ORDER BY message_id")
    assert [bytes(b).split(b"\r\n")[0] for (b,) in bodies] == [
        b"Subject: old 2",
        b"Subject: old 3",
        b"Subject: old 4",
    ]
    [event] = mg.events(4061)
    assert event["fields"]["messages"] == 4

    second = mg.cli("db", "migrate-from-sqlite", str(tmp_path / "old"))
    assert second.returncode == 1 and "was moved to" in second.stderr
    old_node(tmp_path / "copy")  # the same messages from another file: ids already there
    clash = mg.cli("db", "migrate-from-sqlite", str(tmp_path / "copy"))
    assert clash.returncode == 1 and "already holds message" in clash.stderr, clash.stderr
    assert sql(backend, "SELECT COUNT(*) FROM messages") == [(4,)], "nothing copied twice"
    no_secret(mg, moved.stdout, moved.stderr, second.stderr, clash.stderr)

    (tmp_path / "again").mkdir()
    sqlite_node = Mailgate(tmp_path / "again", data_dir=tmp_path / "old")
    sqlite_node.start("--single-process", wait=False)  # the moved file: never run again
    assert sqlite_node.proc is not None and sqlite_node.proc.wait(30) != 0
    assert "was moved to" in sqlite_node.stderr()
