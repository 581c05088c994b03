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

Finer, with HOOK (a sitecustomize.py the bench puts first on the service's PYTHONPATH; it
changes nothing in what mailgate does): each interchange thread's claim (submitted, committed),
flush (start, end) and record (submitted, committed) per batch, one JSON line each, written as
they happen to $MAILGATE_BENCH_STAGES.<pid>; `read_hook` adds them to the timelines. Anything
the hook cannot find (the code changed) is left alone and the finer split is simply missing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

ACCEPTED, SENT = 3000, 2448

HOOK = """
import json, os, threading, time

def _install():
    try:
        from mailgate.queue import store
        from mailgate.interchange import worker
    except Exception:
        return
    out = open(os.environ["MAILGATE_BENCH_STAGES"] + "." + str(os.getpid()), "a", buffering=1)
    lock = threading.Lock()

    def note(kind, started, ids):
        line = json.dumps({"kind": kind, "start": started, "end": time.time(), "ids": ids})
        with lock:
            out.write(line + "\\n")

    def follow(kind, future, started, ids_of):
        def done(f):
            try:
                note(kind, started, [] if f.exception() else ids_of(f.result()))
            except Exception:
                pass
        future.add_done_callback(done)
        return future

    original_claim = getattr(store.QueueStore, "claim", None)
    original_record = getattr(store.QueueStore, "record", None)
    original_flush = getattr(worker.InterchangeThread, "_flush", None)
    if None in (original_claim, original_record, original_flush):
        return

    def claim(self, *args, **kwargs):
        started = time.time()
        future = original_claim(self, *args, **kwargs)
        return follow("claim", future, started, lambda claims: [c.queue_id for c in claims])

    def record(self, outcomes, *args, **kwargs):
        started = time.time()
        ids = [o.claim.queue_id for o in outcomes]
        future = original_record(self, outcomes, *args, **kwargs)
        return follow("record", future, started, lambda _: ids)

    def flush(self, session, outcomes):
        started = time.time()
        try:
            return original_flush(self, session, outcomes)
        finally:
            note("flush", started, [o.claim.queue_id for o in outcomes])

    store.QueueStore.claim, store.QueueStore.record = claim, record
    worker.InterchangeThread._flush = flush

if os.environ.get("MAILGATE_BENCH_STAGES"):
    _install()
"""


@dataclass
class Timeline:
    queue_id: str
    received: float | None = None
    accepted: float | None = None
    started: float | None = None
    finished: float | None = None
    sent: float | None = None
    # From HOOK, when it ran (the last claim, flush and record that held the message):
    claim_submitted: float | None = None
    claimed: float | None = None
    batch: int = 0  # messages in that claim
    flush_started: float | None = None
    flushed: float | None = None
    record_submitted: float | None = None
    recorded: float | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.received, self.accepted, self.started, self.finished, self.sent)

    @property
    def hooked(self) -> bool:
        return self.complete and None not in (self.claimed, self.flushed, self.recorded)


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


def install_hook(directory: Path, base_pythonpath: str) -> dict[str, str]:
    """Write HOOK as DIRECTORY/sitecustomize.py; the environment that makes mailgate load it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(p for p in (str(directory), base_pythonpath) if p)
    return {"PYTHONPATH": path, "MAILGATE_BENCH_STAGES": str(directory / "stages")}


def read_hook(directory: Path, timelines: dict[str, Timeline]) -> int:
    """Add the hook's claim, flush and record times to `timelines`; lines read."""
    fields = {
        "claim": ("claim_submitted", "claimed"),
        "flush": ("flush_started", "flushed"),
        "record": ("record_submitted", "recorded"),
    }
    count = 0
    for path in sorted(directory.glob("stages.*")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                start, end = fields[entry["kind"]]
            except (ValueError, KeyError):
                continue
            count += 1
            for queue_id in entry["ids"]:
                timeline = timelines.get(queue_id)
                if timeline is None:
                    continue
                setattr(timeline, start, float(entry["start"]))
                setattr(timeline, end, float(entry["end"]))
                if entry["kind"] == "claim":
                    timeline.batch = len(entry["ids"])
    return count
