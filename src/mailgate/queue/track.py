"""Messages by sender, Message-ID header and recipient address, kept off the accept commit.

Purpose: `mailgate track` and `queue list --sender/--recipient` find messages by those
three keys. In a PostgreSQL queue they are indexes on the columns, as they were in
SQLite until schema 5. In SQLite each of them cost every accepted message a random leaf
page inside its durable commit, the one the SMTP client waits for: 0.05 ms of a 0.42 ms
commit and 18 % of its WAL, 5 % of the accept rate at 1 and at 10 sessions (issue 14,
docs/performance.md). Schema 5 keeps them in `track_keys` instead, written after the 250:
the scheduler's pass (about once a second, in the interchange's commits, which do not
wait for the disk) indexes the messages queued since the last pass, in batches, up to
a mark (`track_through`: the messages' rowid; SQLite's writers take turns, so rowid order
is commit order).

Contract: a lookup is complete, whatever the indexer has done: it reads the keys of the
messages at or below the mark and scans the messages above it (a rowid range: what came
since the last pass, more only while the service is down). The keys and the mark are
written in one transaction, so a crash loses both or neither: the pass after it indexes
those messages again. Deleting a message deletes its keys (triggers), and lowers the mark
when the newest message goes, since SQLite would give its rowid to the next one. The
mark also records the queue id at its rowid: a file whose rowids changed under it (a
VACUUM renumbers a table without an INTEGER PRIMARY KEY) is indexed again from the start.

How it fails: every statement raises StoreError like any query; the pass is one writer
op (queue/store.py), so a failure rolls back keys and mark together and the next tick
tries again. Security: the keys are the columns' values, read and compared only as
bound parameters.
"""

from __future__ import annotations

from typing import Any

from mailgate.queue.backend import SQLITE, Connection

BATCH = 250
"""Messages indexed per transaction: a millisecond or two of the writer lock, which the
receive processes' commits wait for."""

SENDER, MESSAGE_ID, RECIPIENT = "s", "i", "r"
_THROUGH, _THROUGH_ID = "track_through", "track_through_id"

_MAX_ROWID = "(SELECT COALESCE(MAX(rowid), 0) FROM messages)"
_MARK = f"(SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{_THROUGH}')"

SCHEMA = (
    "DROP INDEX IF EXISTS messages_header_message_id",
    "DROP INDEX IF EXISTS messages_sender",
    "DROP INDEX IF EXISTS recipients_address",
    # Ordered by queue id within a key: ids sort by arrival, so "newest first" is a walk.
    """CREATE TABLE IF NOT EXISTS track_keys (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (kind, key, message_id)
) WITHOUT ROWID""",
    f"""CREATE TRIGGER IF NOT EXISTS track_messages_deleted AFTER DELETE ON messages BEGIN
    DELETE FROM track_keys WHERE kind = '{SENDER}' AND key = old.sender
        AND message_id = old.id;
    DELETE FROM track_keys WHERE kind = '{MESSAGE_ID}' AND key = old.header_message_id
        AND message_id = old.id;
    UPDATE meta SET value = COALESCE((SELECT id FROM messages ORDER BY rowid DESC LIMIT 1), '')
        WHERE key = '{_THROUGH_ID}' AND {_MARK} > {_MAX_ROWID};
    UPDATE meta SET value = CAST({_MAX_ROWID} AS TEXT)
        WHERE key = '{_THROUGH}' AND CAST(value AS INTEGER) > {_MAX_ROWID};
END""",
    # Both places that delete recipients do so before their message, whose id is here.
    f"""CREATE TRIGGER IF NOT EXISTS track_recipients_deleted AFTER DELETE ON recipients BEGIN
    DELETE FROM track_keys WHERE kind = '{RECIPIENT}' AND key = old.address
        AND message_id = old.message_id;
END""",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('{_THROUGH}', '0')",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('{_THROUGH_ID}', '')",
)

_INDEX = (
    f"INSERT OR IGNORE INTO track_keys (kind, key, message_id) SELECT '{SENDER}', sender, id "
    "FROM messages WHERE rowid > ? AND rowid <= ?",
    "INSERT OR IGNORE INTO track_keys (kind, key, message_id) "
    f"SELECT '{MESSAGE_ID}', header_message_id, id FROM messages "
    "WHERE rowid > ? AND rowid <= ? AND header_message_id IS NOT NULL",
    "INSERT OR IGNORE INTO track_keys (kind, key, message_id) "
    f"SELECT '{RECIPIENT}', r.address, m.id FROM messages m "
    "CROSS JOIN recipients r ON r.message_id = m.id WHERE m.rowid > ? AND m.rowid <= ?",
)

# The messages above the mark, by each key: what the indexer has not reached yet.
_TAIL = {
    SENDER: "SELECT id FROM messages WHERE rowid > ? AND sender = ?",
    MESSAGE_ID: "SELECT id FROM messages WHERE rowid > ? AND header_message_id = ?",
    # CROSS JOIN: SQLite then keeps this order (the rowid range first); it scanned every
    # recipient for the address otherwise.
    RECIPIENT: "SELECT m.id FROM messages m CROSS JOIN recipients r ON r.message_id = m.id "
    "WHERE m.rowid > ? AND r.address = ?",
}
# PostgreSQL: the columns' own indexes.
_COLUMN = {
    SENDER: "SELECT id FROM messages WHERE sender = ?",
    MESSAGE_ID: "SELECT id FROM messages WHERE header_message_id = ?",
    RECIPIENT: "SELECT message_id FROM recipients WHERE address = ?",
}

# PostgreSQL, newest first: a walk of each column's index ordered by arrival.
_NEWEST = {
    SENDER: "SELECT id, received_at FROM messages WHERE sender = ? "
    "ORDER BY received_at DESC LIMIT ?",
    MESSAGE_ID: "SELECT id, received_at FROM messages WHERE header_message_id = ? "
    "ORDER BY received_at DESC LIMIT ?",
    RECIPIENT: "SELECT m.id, m.received_at FROM recipients r JOIN messages m "
    "ON m.id = r.message_id WHERE r.address = ? ORDER BY r.message_id DESC LIMIT ?",
}


def kept_apart(conn: Connection) -> bool:
    """Whether this store keeps the keys in track_keys (SQLite) or in column indexes."""
    return conn.dialect is SQLITE


def mark(conn: Connection) -> tuple[int, str]:
    """(rowid, queue id) up to which every message's keys are in track_keys."""
    values = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (_THROUGH, _THROUGH_ID)
        ).fetchall()
    )
    try:
        return int(values.get(_THROUGH, 0)), str(values.get(_THROUGH_ID, ""))
    except ValueError:  # written by hand: index everything again
        return 0, ""


def index_new(conn: Connection, limit: int = BATCH) -> int:
    """Write the keys of up to `limit` messages above the mark and move it past them;
    returns how many (0 once caught up, and always for PostgreSQL). In a write
    transaction (a writer op)."""
    if not kept_apart(conn):
        return 0
    through, through_id = mark(conn)
    if through:
        row = conn.execute("SELECT id FROM messages WHERE rowid = ?", (through,)).fetchone()
        if row is None or str(row[0]) != through_id:  # renumbered: start again
            conn.execute("DELETE FROM track_keys")
            through = 0
    row = conn.execute(
        "SELECT MAX(rowid), COUNT(*) FROM "
        "(SELECT rowid FROM messages WHERE rowid > ? ORDER BY rowid LIMIT ?)",
        (through, limit),
    ).fetchone()
    upto, count = row[0], int(row[1])
    if count:
        for statement in _INDEX:
            conn.execute(statement, (through, upto))
        last = conn.execute("SELECT id FROM messages WHERE rowid = ?", (upto,)).fetchone()
        _set_mark(conn, int(upto), str(last[0]))
    elif through == 0 and through_id:
        _set_mark(conn, 0, "")
    return count


def _set_mark(conn: Connection, rowid: int, queue_id: str) -> None:
    for key, value in ((_THROUGH, str(rowid)), (_THROUGH_ID, queue_id)):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def candidates(conn: Connection, kind: str, key: str) -> tuple[str, list[Any]]:
    """A subquery of the queue ids of messages with `key` of `kind`, and its parameters,
    for `m.id IN (...)`: an index seek either way, never a walk of the queue."""
    if not kept_apart(conn):
        return _COLUMN[kind], [key]
    through, _ = mark(conn)
    sql = f"SELECT message_id FROM track_keys WHERE kind = ? AND key = ? UNION ALL {_TAIL[kind]}"
    return sql, [kind, key, through, key]


def newest(conn: Connection, kind: str, key: str, limit: int) -> list[tuple[str, float]]:
    """(queue id, received_at) of up to `limit` messages with `key` of `kind`, newest first."""
    if kept_apart(conn):
        through, _ = mark(conn)
        found = conn.execute(
            "SELECT m.id, m.received_at FROM track_keys t JOIN messages m ON m.id = t.message_id "
            "WHERE t.kind = ? AND t.key = ? ORDER BY t.message_id DESC LIMIT ?",
            (kind, key, limit),
        ).fetchall()
        found += conn.execute(
            f"SELECT m.id, m.received_at FROM messages m WHERE m.id IN ({_TAIL[kind]}) "
            "ORDER BY m.id DESC LIMIT ?",
            (through, key, limit),
        ).fetchall()
    else:
        found = conn.execute(_NEWEST[kind], (key, limit)).fetchall()
    return [(str(queue_id), float(received)) for queue_id, received in found]
