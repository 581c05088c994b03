"""The event store: a bounded, indexed SQLite file at `<log dir>/events.db`.

The JSON lines file is the complete record; this store answers questions about it
quickly: "every 2448 in the last hour", "everything about queue id X", "the last 100".
It is a log, not the queue: WAL with synchronous=NORMAL (a power cut may lose the
last moments, never corrupt the file), at most `[log] store_events` rows (the
writer, eventwriter.py, prunes the oldest by rowid in chunks). This module holds
the schema and the reading side: `EventReader` opens the file read-only (it never
creates it; no file yet is no events) and runs the indexed queries behind `mailgate
events` and `mailgate track`, each driven by exactly one index (see build_query).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FILE_NAME = "events.db"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    rowid    INTEGER PRIMARY KEY,
    ts       REAL NOT NULL,
    event    INTEGER NOT NULL,
    name     TEXT NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    queue_id TEXT,
    message  TEXT NOT NULL,
    fields   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_event ON events (event, ts);
CREATE INDEX IF NOT EXISTS events_category ON events (category, ts);
CREATE INDEX IF NOT EXISTS events_queue ON events (queue_id, ts) WHERE queue_id IS NOT NULL;
"""

_COLUMNS = "rowid, ts, event, name, category, severity, queue_id, message, fields"


def store_path(log_dir: Path) -> Path:
    return log_dir / FILE_NAME


# --- reading -------------------------------------------------------------------------------------
def iso_time(ts: float) -> str:
    """UTC time with milliseconds, as in events.jsonl."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _as_dict(row: Sequence[Any]) -> dict[str, Any]:
    try:
        fields = json.loads(row[8])
    except ValueError:
        fields = {}
    return {
        "rowid": row[0],
        "time": iso_time(row[1]),
        "ts": row[1],
        "id": row[2],
        "name": row[3],
        "category": row[4],
        "severity": row[5],
        "queue_id": row[6],
        "message": row[7],
        "fields": fields,
    }


def build_query(
    *,
    since: float | None = None,
    until: float | None = None,
    ids: Sequence[int] = (),
    categories: Sequence[str] = (),
    queue_id: str | None = None,
    limit: int = 100,
    after_rowid: int | None = None,
    upto_rowid: int | None = None,
) -> tuple[str, list[Any]]:
    """The SQL (and parameters) of `EventReader.query`; exposed to check its plans.

    Exactly one index drives each query; the other conditions are written with a
    unary `+` so the planner cannot pick a worse index for them:
    - after_rowid (following): the rowid range, oldest first;
    - queue_id: (queue_id, ts); one id: (event, ts); one category: (category, ts);
    - several ids or categories: one (event, ts) / (category, ts) search per value,
      each limited, merged;
    - nothing but time: (ts).
    """
    lim = limit if limit > 0 else -1
    if after_rowid is not None:
        where, params = ["rowid > ?"], [after_rowid]
        _add_filters(where, params, since, until, ids, categories, queue_id, upto_rowid, "+")
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?"
        return sql, [*params, lim]
    order = "ORDER BY ts DESC, rowid DESC"
    if queue_id is not None or (len(ids) <= 1 and len(categories) <= 1):
        where, params = [], []
        _add_filters(where, params, since, until, ids, categories, queue_id, upto_rowid, "")
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        return f"SELECT {_COLUMNS} FROM events{cond} {order} LIMIT ?", [*params, lim]
    # Several values of the driving column: one index search each, merged.
    values: list[Any]
    rest_ids: Sequence[int] = ()
    rest_categories: Sequence[str] = ()
    if len(ids) > 1:
        column, values, rest_categories = "event", list(ids), categories
    else:
        column, values, rest_ids = "category", list(categories), ids
    parts: list[str] = []
    params = []
    for value in values:
        where, part_params = [f"{column} = ?"], [value]
        _add_filters(where, part_params, since, until, rest_ids, rest_categories, None,
                     upto_rowid, "+")  # fmt: skip
        parts.append(
            f"SELECT * FROM (SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            f"{order} LIMIT ?)"
        )
        params += [*part_params, lim]
    sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) {order} LIMIT ?"
    return sql, [*params, lim]


def _add_filters(
    where: list[str],
    params: list[Any],
    since: float | None,
    until: float | None,
    ids: Sequence[int],
    categories: Sequence[str],
    queue_id: str | None,
    upto_rowid: int | None,
    plus: str,
) -> None:
    # Time stays indexable (it is the second column of every index) unless following.
    if since is not None:
        where.append(f"{plus}ts >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{plus}ts <= ?")
        params.append(until)
    if queue_id is not None:
        where.append(f"{plus}queue_id = ?")
        params.append(queue_id)
        plus = "+"  # the queue index drives; the rest only filters
    for column, values in (("event", list(ids)), ("category", list(categories))):
        if not values:
            continue
        if len(values) == 1:
            where.append(f"{plus}{column} = ?")
        else:
            where.append(f"+{column} IN ({','.join('?' * len(values))})")
        params.extend(values)
        plus = "+"
    if upto_rowid is not None:
        where.append("+rowid <= ?")
        params.append(upto_rowid)


class EventReader:
    """Read-only queries on the store; `open` returns None when there is no store yet."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> EventReader | None:
        if not path.is_file():
            return None
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            conn.execute("PRAGMA query_only=1")
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
            if found is None:
                conn.close()
                return None
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last_rowid(self) -> int:
        row = self._conn.execute("SELECT MAX(rowid) FROM events").fetchone()
        return int(row[0] or 0)

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        ids: Sequence[int] = (),
        categories: Sequence[str] = (),
        queue_id: str | None = None,
        limit: int = 100,
        after_rowid: int | None = None,
        *,
        upto_rowid: int | None = None,
    ) -> list[dict[str, Any]]:
        """Matching events as dicts, oldest first.

        Without `after_rowid`: the most recent `limit` matches (by time; 0 = all).
        With it: the first `limit` matches stored after that rowid, for following.
        `upto_rowid` caps the rowids considered (a snapshot to follow from).
        """
        sql, params = build_query(
            since=since,
            until=until,
            ids=ids,
            categories=categories,
            queue_id=queue_id,
            limit=limit,
            after_rowid=after_rowid,
            upto_rowid=upto_rowid,
        )
        rows = [_as_dict(row) for row in self._conn.execute(sql, params).fetchall()]
        if after_rowid is None:
            rows.reverse()
        return rows

    def explain(self, sql: str, params: Sequence[Any]) -> list[str]:
        """The query plan's details, for tests and the bench."""
        return [str(row[3]) for row in self._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
