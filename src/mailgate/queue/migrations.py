"""Versioned schema migrations of the queue, one numbering for both stores.

A store's version is the `schema` row of its `meta` table; a Step brings it from the
version before to its own, in either store's SQL. `upgrade` runs the pending steps in
one transaction (DDL is transactional in SQLite and PostgreSQL) under the store's
write lock (SQLite: the writer flock and BEGIN IMMEDIATE; PostgreSQL: an advisory
lock), so two upgrades never interleave and a failing step leaves the store as it was.
A store newer than this mailgate is never changed: it is refused, as at start.
Version 1 is the schema of releases before numbered migrations, one number for several
shapes (columns and indexes were added under it in place): step 2 brings any of them
to one shape. Who upgrades: a SQLite file is upgraded in place at start (one machine,
nothing to administer); a PostgreSQL store only by `mailgate db upgrade`, which the
operator runs once for all the nodes that share it (docs/nodes.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgate.errors import StoreError
from mailgate.queue import schema, track
from mailgate.queue.backend import POSTGRES, SQLITE, Connection

UPGRADE = "mailgate db upgrade --config FILE"
STATUS = "mailgate db status --config FILE"


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    summary: str
    apply: Callable[[Connection], None]


def _v2(conn: Connection) -> None:
    """Create the queue, or bring any schema-1 SQLite file to today's shape."""
    for statement in schema.tables(conn.dialect):
        conn.execute(statement)
    if conn.dialect is SQLITE:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)").fetchall()}
        if "delay_warned" not in columns:
            conn.execute(f"ALTER TABLE messages ADD COLUMN {schema.DELAY_WARNED}")
    for statement in schema.INDEXES:
        conn.execute(statement)


def _v3(conn: Connection) -> None:
    """The nodes that share the queue, with their heart-beats."""
    conn.execute(schema.NODES)


def _v4(conn: Connection) -> None:
    """Recipients by state, connector and message: counts and leases without a scan."""
    conn.execute(schema.RECIPIENTS_STATE)


def _v5(conn: Connection) -> None:
    """SQLite: the tracking keys leave the accept commit (queue/track.py); the messages
    already queued are indexed here, so that lookups start complete and cheap.
    PostgreSQL keeps its column indexes: nothing to do."""
    if conn.dialect is not SQLITE:
        return
    for statement in track.SCHEMA:
        conn.execute(statement)
    while track.index_new(conn, 100_000):
        pass


STEPS = (
    Step(
        2,
        "messages, bodies, recipients and attempts with their due, lease, expiry, delay "
        "and tracking indexes (brings every schema-1 file to one shape)",
        _v2,
    ),
    Step(3, "nodes: each node's name, instance, heart-beat, state and work", _v3),
    Step(
        4,
        "recipients_state: recipients by state, connector and message (status counts, "
        "the oldest open message and the leases without a scan of the queue)",
        _v4,
    ),
    Step(
        5,
        "SQLite: messages by sender, Message-ID and recipient in track_keys, written after "
        "the 250 instead of in each message's commit (PostgreSQL: no change)",
        _v5,
    ),
)
CURRENT = STEPS[-1].version


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The version a store holds (None: no queue schema in it yet) and this mailgate's."""

    found: int | None
    known: int = CURRENT

    @property
    def current(self) -> bool:
        return self.found == self.known

    @property
    def newer(self) -> bool:
        return self.found is not None and self.found > self.known

    @property
    def pending(self) -> tuple[Step, ...]:
        if self.newer:
            return ()
        return tuple(step for step in STEPS if step.version > (self.found or 0))

    def describe(self) -> str:
        if self.found is None:
            return f"no queue schema yet (this mailgate creates schema {self.known})"
        if self.current:
            return f"schema {self.found}: up to date"
        if self.newer:
            return f"schema {self.found}: newer than this mailgate knows ({self.known})"
        return f"schema {self.found}: older than this mailgate needs ({self.known})"

    def refusal(self, where: str) -> str:
        """Why a service will not start on this store, naming the command to run."""
        if self.newer:
            return (
                f"the queue {where} has schema {self.found}, newer than this mailgate knows "
                f"({self.known}): run the mailgate that upgraded it (`{STATUS}` shows both)"
            )
        if self.found is None:
            return f"the queue {where} has no mailgate schema yet: create it with `{UPGRADE}`"
        return (
            f"the queue {where} has schema {self.found}, this mailgate needs {self.known}: "
            f"run `{UPGRADE}` (once, for every node that shares it)"
        )


def status(conn: Connection) -> SchemaStatus:
    """The schema version of the store `conn` is open on."""
    if conn.dialect is POSTGRES:
        found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
    else:
        found = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()[0]
    if not found:
        return SchemaStatus(None)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        return SchemaStatus(None)
    try:
        return SchemaStatus(int(str(row[0])))
    except ValueError:
        raise StoreError(f"the queue's schema version {row[0]!r} is not a number") from None


def upgrade(conn: Connection, where: str) -> tuple[SchemaStatus, tuple[Step, ...]]:
    """Apply the pending steps in one transaction; (status before, steps applied).
    Raises StoreError, changing nothing, on a store newer than this mailgate."""
    conn.begin()
    try:
        if conn.dialect is POSTGRES:
            # Per schema, so that stores in other schemas of one database do not wait.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('mailgate schema ' "
                "|| COALESCE(current_schema(), '')))"
            ).fetchone()
        before = status(conn)
        if before.newer:
            raise StoreError(before.refusal(where))
        steps = before.pending
        for step in steps:
            step.apply(conn)
        if steps:
            conn.execute(schema.tables(conn.dialect)[0])  # meta, for a store made before it
            conn.execute("DELETE FROM meta WHERE key = 'schema'")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(steps[-1].version),)
            )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return before, steps
