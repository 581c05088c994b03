"""Writing the event store (eventstore.py): a sink on the event log, and its writer thread.

- `EventStoreSink` is a logging handler added to an `EventLog`. Its `emit` never
  touches the disk and never raises: it appends the record's (event, fields, time)
  to a bounded in-memory queue, or drops it and counts the drop when the queue is
  full (so a slow disk can never slow down mail).
- `EventStoreWriter` is a supervised thread body. It opens its own connection
  inside its thread, drains the sink in batches (one transaction per batch, which
  also prunes), reports dropped or unwritable events as event 1010 at most every
  few seconds, and returns once it is asked to stop, after a final drain.

Wiring (service/control.py: the lock holder runs it, an ordinary, non-critical thread):

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
from typing import Any, Protocol

from mailgate.observe import catalog
from mailgate.observe.catalog import EventType
from mailgate.observe.events import _RECORD_KEY, EventLog, render
from mailgate.observe.eventstore import SCHEMA, SCHEMA_VERSION, store_path

MAX_EVENTS = 1_000_000
QUEUE_CAPACITY = 20_000
BATCH = 500
INTERVAL = 0.2
PRUNE_CHUNK = 10_000
REPORT_EVERY = 10.0
ERROR_BACKOFF = 5.0

_INSERT = (
    "INSERT INTO events (ts, event, name, category, severity, queue_id, message, fields) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


Item = tuple[EventType, dict[str, Any], float]
Row = tuple[float, int, str, str, str, str | None, str, str]


class Beat(Protocol):
    """What the writer needs of its thread's handle (supervise/handle.py's ThreadHandle)."""

    @property
    def stopping(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...

    def busy(self) -> None: ...

    def progress(self) -> None: ...

    def idle(self) -> None: ...


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

    def __call__(self, handle: Beat) -> None:
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

    def _drain(self, conn: sqlite3.Connection, handle: Beat | None) -> bool:
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
