-- mailgate queue schema (SQLite). Portable SQL; the PostgreSQL schema differs only in
-- column types (BYTEA, BIGINT identity).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id                TEXT PRIMARY KEY,
    received_at       DOUBLE PRECISION NOT NULL,
    sender            TEXT NOT NULL,
    size              INTEGER NOT NULL,
    client            TEXT NOT NULL,
    header_message_id TEXT,
    smtputf8          INTEGER NOT NULL DEFAULT 0,
    kind              TEXT NOT NULL DEFAULT 'normal',
    origin            TEXT,
    done_at           DOUBLE PRECISION
);
-- A pickup file's identity: after a crash, a file already queued is recognised, not re-sent.
CREATE INDEX IF NOT EXISTS messages_origin ON messages (origin) WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
-- The scheduler's expiry walks open messages oldest first (queue/expiry.py).
CREATE INDEX IF NOT EXISTS messages_open ON messages (received_at, id) WHERE done_at IS NULL;
CREATE TABLE IF NOT EXISTS bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages (id),
    data       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    id                INTEGER PRIMARY KEY,
    message_id        TEXT NOT NULL REFERENCES messages (id),
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
);
-- Claiming due work walks this partial index in due order: no sort, no scan. Its predicate
-- is model.WAITING_STATES written out: the queries build theirs from the model
-- (queue/states.py), and SQLite uses a partial index only when the query holds its
-- predicate term for term (tests/unit/test_queue_states.py checks that both still match).
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (connector, due_at)
    WHERE state IN ('queued', 'deferred');
-- Leases (state active, RecipientState.ACTIVE), likewise checked.
CREATE INDEX IF NOT EXISTS recipients_lease ON recipients (lease_until) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS recipients_message ON recipients (message_id);
CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL REFERENCES recipients (id),
    message_id   TEXT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    finished_at  DOUBLE PRECISION NOT NULL,
    disposition  TEXT NOT NULL,
    reply        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id);
-- `mailgate track`: find messages by Message-ID header, sender, recipient, and the bounces
-- of a message (a bounce's client names the message it reports on).
CREATE INDEX IF NOT EXISTS messages_header_message_id ON messages (header_message_id, received_at)
    WHERE header_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender, received_at);
CREATE INDEX IF NOT EXISTS messages_dsn ON messages (client) WHERE kind <> 'normal';
CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address, message_id);
