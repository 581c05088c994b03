"""Each message's way through a stopped mailgate, from its own records: bench/latency.py's data.

Per queue id, five wall-clock times (time.time() of the process that noted them):

- received: `messages.received_at` in the queue file, taken when DATA ended, before the commit;
- accepted: event 3000 MessageReceived, written once the enqueue commit is durable, just
  before the 250 (workers' events keep their own time when the master writes them);
- started / finished: the delivered attempt's `started_at` / `finished_at` (attempts table):
  the connector's deliver call for that message, inside its thread's claimed batch;
- sent: event 2448 Sent, written after the batch was flushed (files and directories fsync'd)
  and its outcomes recorded in a durable commit: "delivered" in the strongest sense.

So accepted -> sent is accept -> delivered, and it splits into accepted -> started (wake-up,
claim commit, earlier messages of the batch), started -> finished (this message's delivery)
and finished -> sent (the rest of the batch, its flush, the record commit). Read after the
service stopped (the event log is complete, the queue file quiescent); read-only.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

ACCEPTED, SENT = 3000, 2448


@dataclass
class Timeline:
    queue_id: str
    received: float | None = None
    accepted: float | None = None
    started: float | None = None
    finished: float | None = None
    sent: float | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.received, self.accepted, self.started, self.finished, self.sent)


def read_events(log_dir: Path) -> dict[str, Timeline]:
    """Queue id -> timeline with `accepted` and `sent` from events.jsonl* (first of each)."""
    found: dict[str, Timeline] = {}
    markers = (f'"id": {ACCEPTED},'.encode(), f'"id": {SENT},'.encode())
    for path in sorted(log_dir.glob("events.jsonl*")):
        with open(path, "rb") as f:
            for line in f:
                if not any(m in line for m in markers):
                    continue
                try:
                    event = json.loads(line)
                    queue_id, ts = str(event["fields"]["queue_id"]), float(event["ts"])
                except (ValueError, KeyError, TypeError):
                    continue
                timeline = found.setdefault(queue_id, Timeline(queue_id))
                if event["id"] == ACCEPTED and timeline.accepted is None:
                    timeline.accepted = ts
                elif event["id"] == SENT and timeline.sent is None:
                    timeline.sent = ts
    return found


def read_queue(db: Path, timelines: dict[str, Timeline]) -> None:
    """Fill `received`, `started`, `finished` from the queue file (the last delivered attempt)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT m.id, m.received_at, a.started_at, a.finished_at FROM messages m "
            "LEFT JOIN attempts a ON a.message_id = m.id AND a.disposition = 'delivered' "
            "ORDER BY a.id"
        ).fetchall()
    finally:
        conn.close()
    for queue_id, received, started, finished in rows:
        timeline = timelines.setdefault(queue_id, Timeline(queue_id))
        timeline.received = received
        if started is not None:
            timeline.started, timeline.finished = started, finished


def read(data_dir: Path, queue_db: Path | None = None) -> dict[str, Timeline]:
    timelines = read_events(data_dir / "log")
    read_queue(queue_db or data_dir / "queue" / "queue.db", timelines)
    return timelines
