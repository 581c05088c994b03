"""The queue's tables and indexes, written once for both stores.

The DDL is portable SQL with tokens that each store fills in: `{rowid}` (an integer
key the store assigns: SQLite's rowid alias, a PostgreSQL identity column), `{bigint}`,
`{blob}` (BLOB, BYTEA) and `{refs_*}` (the REFERENCES clauses). SQLite does not enforce
its REFERENCES (foreign_keys is off), so PostgreSQL declares none: both stores keep
the same semantics, orphan rows are possible in either, and `mailgate queue check`
finds them in either. Booleans are integers 0/1 in both; times are seconds since the
epoch in DOUBLE PRECISION. Every statement is idempotent (IF NOT EXISTS).
"""

from __future__ import annotations

from mailgate.queue.backend import POSTGRES, SQLITE, Dialect

TABLES = (
    """CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS messages (
    id                TEXT PRIMARY KEY,
    received_at       DOUBLE PRECISION NOT NULL,
    sender            TEXT NOT NULL,
    size              {bigint} NOT NULL,
    client            TEXT NOT NULL,
    header_message_id TEXT,
    smtputf8          INTEGER NOT NULL DEFAULT 0,
    kind              TEXT NOT NULL DEFAULT 'normal',
    origin            TEXT,
    done_at           DOUBLE PRECISION{delay_warned}
)""",
    """CREATE TABLE IF NOT EXISTS bodies (
    message_id TEXT PRIMARY KEY{refs_messages},
    data       {blob} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS recipients (
    id                {rowid},
    message_id        TEXT NOT NULL{refs_messages},
    address           TEXT NOT NULL,
    connector         TEXT NOT NULL,
    state             TEXT NOT NULL,
    due_at            DOUBLE PRECISION NOT NULL,
    lease_owner       TEXT,
    lease_until       DOUBLE PRECISION,
    released          INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    internal_failures INTEGER NOT NULL DEFAULT 0,
    last_reply        TEXT,
    remote_mta        TEXT,
    updated_at        DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS attempts (
    id           {rowid},
    recipient_id {bigint} NOT NULL{refs_recipients},
    message_id   TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION NOT NULL,
    disposition  TEXT NOT NULL,
    reply        TEXT NOT NULL
)""",
)

# Schema 3: the nodes sharing the queue (queue/nodes.py), one row per node name.
NODES = """CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    instance     TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    data_dir     TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    state        TEXT NOT NULL,
    work         TEXT NOT NULL DEFAULT ''
)"""

DELAY_WARNED = "delay_warned INTEGER NOT NULL DEFAULT 0"

# Schema 4: recipients by state, then connector, then message. It makes what a big queue
# asks every second or two cheap: the counts of `ctl status`, the dashboard and the
# metrics (a covering range per open state, never the finished rows kept for tracking),
# the oldest open message of a connector (a seek for the lowest queue id), whether a
# connector has work in flight, and the leases (the lease queries' ORDER BY r.id made
# SQLite scan the whole table in rowid order rather than use recipients_lease).
RECIPIENTS_STATE = (
    "CREATE INDEX IF NOT EXISTS recipients_state ON recipients (state, connector, message_id)"
)

INDEXES = (
    # A pickup file's identity: after a crash, a file already queued is recognised.
    "CREATE INDEX IF NOT EXISTS messages_origin ON messages (origin) WHERE origin IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL",
    # The scheduler's expiry walks open messages oldest first (queue/expiry.py).
    "CREATE INDEX IF NOT EXISTS messages_open ON messages (received_at, id) WHERE done_at IS NULL",
    # Claiming due work walks this partial index in due order: no sort, no scan. Its
    # predicate is model.WAITING_STATES written out: the queries build theirs from the
    # model (queue/states.py), and SQLite uses a partial index only when the query holds
    # its predicate term for term (tests/unit/test_queue_states.py checks both match).
    "CREATE INDEX IF NOT EXISTS recipients_due ON recipients (connector, due_at) "
    "WHERE state IN ('queued', 'deferred')",
    # Leases (RecipientState.ACTIVE), likewise checked.
    "CREATE INDEX IF NOT EXISTS recipients_lease ON recipients (lease_until) "
    "WHERE state = 'active'",
    "CREATE INDEX IF NOT EXISTS recipients_message ON recipients (message_id)",
    "CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id)",
    # `mailgate track`: messages by Message-ID header, sender, recipient, and the bounces
    # of a message (a bounce's client names the message it reports on).
    "CREATE INDEX IF NOT EXISTS messages_header_message_id ON messages "
    "(header_message_id, received_at) WHERE header_message_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender, received_at)",
    "CREATE INDEX IF NOT EXISTS messages_dsn ON messages (client) WHERE kind <> 'normal'",
    "CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address, message_id)",
    # Delay warnings walk the unwarned open messages oldest first.
    "CREATE INDEX IF NOT EXISTS messages_waiting ON messages (received_at) "
    "WHERE done_at IS NULL AND delay_warned = 0",
)

_TOKENS = {
    SQLITE.name: {
        "rowid": "INTEGER PRIMARY KEY",
        "bigint": "INTEGER",
        "blob": "BLOB",
        "refs_messages": " REFERENCES messages (id)",
        "refs_recipients": " REFERENCES recipients (id)",
    },
    POSTGRES.name: {
        "rowid": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "bigint": "BIGINT",
        "blob": "BYTEA",
        "refs_messages": "",
        "refs_recipients": "",
    },
}


def tables(dialect: Dialect) -> list[str]:
    """The CREATE TABLE statements in `dialect`."""
    tokens = dict(_TOKENS[dialect.name], delay_warned=f",\n    {DELAY_WARNED}")
    return [statement.format(**tokens) for statement in TABLES]
