"""A bounded, indexed SQLite store of events at `<log dir>/events.db`, for `mailgate events`.

The JSON lines file is the complete record; this store answers questions about it
quickly: "every 2448 in the last hour", "everything about queue id X", "the last 100".
It is a log, not the queue: WAL with synchronous=NORMAL (a power cut may lose the
last moments, never corrupt the file), and it keeps at most `max_events` rows,
pruning the oldest by rowid in chunks.

Three parts:

- `EventStoreSink` is a logging handler added to an `EventLog`. Its `emit` never
  touches the disk and never raises: it appends the record's (event, fields, time)
  to a bounded in-memory queue, or drops it and counts the drop when the queue is
  full (so a slow disk can never slow down mail).
- `EventStoreWriter` is a supervised thread body. It opens its own connection
  inside its thread, drains the sink in batches (one transaction per batch, which
  also prunes), reports dropped or unwritable events as event 1010 at most every
  few seconds, and returns once it is asked to stop, after a final drain.
- `EventReader` opens the file read-only (it never creates it) and runs the
  indexed queries behind `mailgate events` and `mailgate track`.

Wiring, in bootstrap (the writer is an ordinary, non-critical supervised thread):

    writer = attach_event_store(events, config.log_dir, max_events)
    sup.spawn("events", "events", writer, on_stop=writer.wake)
    ...
    writer.flush()   # after the service stopped: stores what was emitted since

`on_stop=writer.wake` lets the writer notice a stop at once (otherwise within its
poll interval, 0.2 s); `flush()` writes, in the calling thread, what the stopped
writer left in the queue (the final ServiceStopped event, for instance).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailgate.observe import catalog
from mailgate.observe.catalog import EventType
from mailgate.observe.events import _RECORD_KEY, EventLog, render
from mailgate.supervise.handle import ThreadHandle

FILE_NAME = "events.db"
MAX_EVENTS = 1_000_000
QUEUE_CAPACITY = 20_000
BATCH = 500
INTERVAL = 0.2
PRUNE_CHUNK = 10_000
REPORT_EVERY = 10.0
ERROR_BACKOFF = 5.0
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
_INSERT = (
    "INSERT INTO events (ts, event, name, category, severity, queue_id, message, fields) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

Item = tuple[EventType, dict[str, Any], float]
Row = tuple[float, int, str, str, str, str | None, str, str]


def store_path(log_dir: Path) -> Path:
    return log_dir / FILE_NAME


# --- writing -------------------------------------------------------------------------------------
class EventStoreSink(logging.Handler):
    """Queues events for the writer; never blocks on disk, never raises, drops when full."""

    def __init__(self, capacity: int = QUEUE_CAPACITY, wake_at: int = BATCH) -> None:
        super().__init__(logging.DEBUG)
        self.capacity = max(1, capacity)
        self.wake_at = max(1, min(wake_at, self.capacity))
        self.queue: collections.deque[Item] = collections.deque()
        self.wakeup = threading.Event()
        self.dropped = 0  # events refused because the queue was full, since start

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock: emitters are serialised, the writer only pops,
        # so the length check cannot be overtaken and the queue never exceeds capacity.
        try:
            item = getattr(record, _RECORD_KEY, None)
            if item is None:
                return
            queue = self.queue
            if len(queue) >= self.capacity:
                self.dropped += 1
                return
            queue.append(item)
            if len(queue) == self.wake_at:
                self.wakeup.set()
        except Exception:  # a log sink must never break its caller
            self.dropped += 1

    def take(self, limit: int) -> list[Item]:
        """Up to `limit` queued events, oldest first (called by the writer only)."""
        queue = self.queue
        taken: list[Item] = []
        with contextlib.suppress(IndexError):
            for _ in range(min(limit, len(queue))):
                taken.append(queue.popleft())
        return taken


def open_for_writing(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store; autocommit mode with explicit transactions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _row(item: Item) -> Row:
    event, fields, when = item
    queue_id = fields.get("queue_id")
    return (
        float(when),
        event.id,
        event.name,
        event.category.value,
        event.severity.value,
        None if queue_id is None else str(queue_id),
        render(event, fields, escape=True),
        json.dumps(fields, default=str, ensure_ascii=False),
    )


class EventStoreWriter:
    """Thread body: drains an EventStoreSink into the store in batches until stopped."""

    def __init__(
        self,
        path: Path,
        sink: EventStoreSink,
        *,
        max_events: int = MAX_EVENTS,
        events: EventLog | None = None,
        batch: int = BATCH,
        interval: float = INTERVAL,
        prune_chunk: int = PRUNE_CHUNK,
        report_every: float = REPORT_EVERY,
    ) -> None:
        self.path = path
        self.sink = sink
        self.max_events = max(1, max_events)
        self.events = events
        self.batch = max(1, batch)
        self.interval = interval
        self.prune_chunk = max(1, prune_chunk)
        self.report_every = report_every
        self.written = 0
        self.failed = 0  # events lost because they could not be written
        # Batches are taken one at a time, by the thread or flush(); each writes its own
        # outside the lock, so a flush at exit never queues behind a write that hangs.
        self._lock = threading.Lock()
        self._reported_dropped = 0
        self._reported_failed = 0
        self._last_report = -float("inf")
        self._error = ""

    def wake(self) -> None:
        """Make the writer look at its queue (and at its stop flag) now."""
        self.sink.wakeup.set()

    def __call__(self, handle: ThreadHandle) -> None:
        conn = open_for_writing(self.path)
        try:
            while True:
                stopping = handle.stopping
                self.sink.wakeup.clear()
                ok = self._drain(conn, handle)
                self._report(force=stopping)
                if stopping:
                    return
                handle.idle()
                if not ok:
                    handle.wait(ERROR_BACKOFF)
                elif not self.sink.queue:
                    self.sink.wakeup.wait(self.interval)
        finally:
            conn.close()

    def flush(self) -> int:
        """Write what is queued now, in the calling thread; the number of events written."""
        before = self.written
        conn = open_for_writing(self.path)
        try:
            self._drain(conn, None)
        finally:
            conn.close()
        return self.written - before

    def _drain(self, conn: sqlite3.Connection, handle: ThreadHandle | None) -> bool:
        """Write the events queued now in batches; False if a batch could not be written.

        Only what is queued on entry: under a flood the caller still gets to look at
        its stop flag between drains.
        """
        left = len(self.sink.queue)
        while left > 0:
            with self._lock:  # taking a batch only: never held across the write (Q151669)
                items = self.sink.take(min(self.batch, left))
            if not items:
                return True
            left -= len(items)
            if handle is not None:
                handle.busy()
            if not self._write(conn, items):
                return False
            if handle is not None:
                handle.progress()
        return True

    def _write(self, conn: sqlite3.Connection, items: Sequence[Item]) -> bool:
        rows = []
        for item in items:
            try:
                rows.append(_row(item))
            except Exception:  # an unrenderable event is lost, not the batch
                with self._lock:
                    self.failed += 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            self._prune(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            with self._lock:
                self.failed += len(rows)
                self._error = f"write failed: {exc}"
            return False
        with self._lock:
            self.written += len(rows)
        return True

    def _prune(self, conn: sqlite3.Connection) -> int:
        """Delete the oldest rows beyond max_events, at most prune_chunk per call.

        Rows are only ever deleted from the oldest end and rowids are assigned in
        increasing order, so MAX(rowid) - MIN(rowid) + 1 is the row count: two index
        lookups instead of a COUNT(*).
        """
        low = conn.execute("SELECT MIN(rowid) FROM events").fetchone()[0]
        high = conn.execute("SELECT MAX(rowid) FROM events").fetchone()[0]
        if low is None or high - low + 1 <= self.max_events:
            return 0
        cutoff = min(high - self.max_events + 1, low + self.prune_chunk)
        return conn.execute("DELETE FROM events WHERE rowid < ?", (cutoff,)).rowcount

    def _report(self, *, force: bool = False) -> None:
        """Event 1010 for events dropped or lost since the last report, rate-limited."""
        dropped, failed = self.sink.dropped, self.failed
        new_dropped = dropped - self._reported_dropped
        new_failed = failed - self._reported_failed
        if not (new_dropped or new_failed) or self.events is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < self.report_every:
            return
        self._last_report = now
        self._reported_dropped, self._reported_failed = dropped, failed
        reasons = []
        if new_dropped:
            reasons.append(f"{new_dropped} dropped because its queue was full")
        if new_failed:
            reasons.append(f"{new_failed} not written ({self._error or 'unrenderable'})")
        self.events.emit(
            catalog.EVENTS_LOST,
            path=self.path,
            count=new_dropped + new_failed,
            total=dropped + failed,
            reason="; ".join(reasons),
        )


def attach_event_store(
    events: EventLog, log_dir: Path, max_events: int = MAX_EVENTS
) -> EventStoreWriter:
    """Add a store sink to `events`; returns the writer body to run as a supervised thread."""
    sink = EventStoreSink()
    events.add_sink(sink)
    return EventStoreWriter(store_path(log_dir), sink, max_events=max_events, events=events)


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
