"""Event store benchmark: `mailgate events`-style queries on a full store of 1,000,000 events.

    .venv/bin/python bench/events.py [--events 1000000] [--days 7] [--runs 5] [--dir DIR]
                                     [--writer 50000] [--cli]

Builds `<dir>/log/events.db` (a fresh temporary directory unless --dir names one that
already holds a store of the right size) with the event store's own schema: a realistic
mix over `--days` ending now, keyed by message (each message is received, delivered to one
to three recipients, sometimes deferred first or bounced with a report, then done), plus
events with no queue id (refused recipients, thread starts, lease releases). Rows go in
with executemany in transactions of 100,000.

Then times, through `EventReader.query` (the API `mailgate events` uses), each query
`--runs` times on one read-only connection and prints the first (cold) and the median
time in ms:

- last 100 (the default `mailgate events`);
- `--id 2448 --since 1h`;
- `--category Interchange` (most recent 100);
- `--queue-id Q` for a message from the middle of the span;
- `--id 2400 --id 2401 --since 1d`, `--category NDR --since 1d`;
- `--since 1h --limit 0` (every event of the last hour);
- a `--follow` poll: rows after the newest rowid but 20, filtered by id.

`--writer N` then pushes N events through the real sink and EventStoreWriter into the
full store (max_events = --events, so every batch also prunes) and prints events/s.
`--cli` also times one `mailgate events --id 2448 --since 1h --json` subprocess (Python
start-up included). Target: every query under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailgate.model import new_queue_id
from mailgate.observe import catalog
from mailgate.observe.catalog import EventType
from mailgate.observe.events import render
from mailgate.observe.eventstore import EventReader, store_path
from mailgate.observe.eventwriter import EventStoreSink, EventStoreWriter, open_for_writing

TARGET_MS = 200.0
INSERT = (
    "INSERT INTO events (ts, event, name, category, severity, queue_id, message, fields) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
Row = tuple[float, int, str, str, str, str | None, str, str]


def row(ts: float, event: EventType, queue_id: str | None, fields: dict[str, Any]) -> Row:
    """A row as the writer makes it (message in the escaped stderr form, fields as JSON)."""
    return (
        ts,
        event.id,
        event.name,
        event.category.value,
        event.severity.value,
        queue_id,
        render(event, fields, escape=True),
        json.dumps(fields, ensure_ascii=False),
    )


def count_events(path: Path) -> int:
    reader = EventReader.open(path)
    if reader is None:
        return 0
    with reader:
        return reader.count()


def message_events(rng: random.Random, ts: float) -> Iterator[Row]:
    """The events of one message's life, starting at `ts`."""
    qid = new_queue_id(ts)
    rcpts = [
        f"user{rng.randrange(5000)}@po{rng.randrange(20)}.example.test"
        for _ in range(rng.choice((1, 1, 1, 2, 3)))
    ]
    sender = f"sender{rng.randrange(2000)}@example.org"
    yield row(
        ts,
        catalog.MESSAGE_RECEIVED,
        qid,
        {
            "queue_id": qid,
            "client": f"host{rng.randrange(50)} [10.0.0.{rng.randrange(250)}]",
            "sender": sender,
            "recipients": len(rcpts),
            "size": rng.randrange(800, 200_000),
            "message_id": f"<{qid.lower()}@example.org>",
        },
    )
    t = ts + rng.uniform(0.01, 0.5)
    bounced = []
    for rcpt in rcpts:
        connector = "smarthost" if rng.random() < 0.3 else "postoffice"
        common = {"queue_id": qid, "recipient": rcpt, "connector": connector}
        attempts = 1
        if rng.random() < 0.08:
            yield row(
                t,
                catalog.DEFERRED,
                qid,
                {**common, "reply": "451 4.3.0 try again later", "retry_in": "60s"},
            )
            t += 60 + rng.uniform(0, 5)
            attempts = 2
        if rng.random() < 0.02:
            yield row(t, catalog.BOUNCED, qid, {**common, "reply": "550 5.1.1 no such user"})
            bounced.append(rcpt)
        else:
            yield row(
                t,
                catalog.SENT,
                qid,
                {
                    **common,
                    "reply": "250 2.0.0 ok",
                    "delays": f"{t - ts:.2f}/0.003",
                    "attempts": attempts,
                },
            )
        t += rng.uniform(0.001, 0.05)
    yield row(t, catalog.MESSAGE_DONE, qid, {"queue_id": qid})
    if bounced:
        yield row(
            t,
            catalog.NDR_GENERATED,
            qid,
            {
                "queue_id": qid,
                "bounce_id": new_queue_id(t),
                "kind": "bounce",
                "recipient": sender,
                "failed": ", ".join(f"<{r}>" for r in bounced),
            },
        )


def other_event(rng: random.Random, ts: float) -> Row:
    pick = rng.random()
    if pick < 0.6:
        return row(
            ts,
            catalog.INVALID_RECIPIENT,
            None,
            {
                "recipient": f"nobody{rng.randrange(1000)}@example.test",
                "client": f"spam{rng.randrange(100)} [192.0.2.{rng.randrange(250)}]",
                "reply": "550 5.1.1 no such mailbox",
            },
        )
    if pick < 0.9:
        return row(
            ts,
            catalog.THREAD_STARTED,
            None,
            {
                "thread": f"postoffice-{rng.randrange(1, 5)}",
                "role": "interchange",
                "native_id": rng.randrange(1000, 99999),
            },
        )
    return row(ts, catalog.LEASES_RELEASED, None, {"count": 1, "why": "after lease expiry"})


def fill(path: Path, total: int, days: float, seed: int = 1) -> tuple[int, list[str]]:
    """Write exactly `total` events over `days` ending now; returns (rows, some queue ids)."""
    rng = random.Random(seed)
    end = time.time()
    start = end - days * 86400
    # Events per message, measured on a sample, sets how many messages cover the span; the
    # few rows still missing at the end are events with no queue id at random times.
    probe = random.Random(seed + 1)
    per_message = sum(len(list(message_events(probe, 0.0))) for _ in range(5000)) / 5000 + 0.05
    starts = sorted(rng.uniform(start, end) for _ in range(int(total / per_message * 0.995)))
    every = max(1, len(starts) // 50)
    conn = open_for_writing(path)
    written = 0
    pending: list[Row] = []
    sample: list[str] = []

    def flush(rows: list[Row]) -> None:
        nonlocal written
        rows = rows[: total - written]
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
        written += len(rows)

    try:
        for n, ts in enumerate(starts):
            rows = list(message_events(rng, ts))
            if n % every == 0:
                sample.append(str(rows[0][5]))
            pending += rows
            if rng.random() < 0.05:
                pending.append(other_event(rng, ts + 0.001))
            if len(pending) >= 100_000:
                flush(pending)
                pending = []
        flush(pending)
        while written < total:
            flush([other_event(rng, rng.uniform(start, end)) for _ in range(total - written)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return written, sample


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, int]:
    """(first ms, median ms, rows) of `runs` calls."""
    times, rows = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
        rows = len(result)
    return times[0], statistics.median(times), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="keep the store here")
    parser.add_argument("--writer", type=int, default=50_000, help="0 to skip")
    parser.add_argument("--cli", action="store_true")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="mailgate-bench-events-"))
    log_dir = root / "log"
    path = store_path(log_dir)
    try:
        existing = count_events(path)
        if existing != args.events:
            path.unlink(missing_ok=True)
            started = time.perf_counter()
            written, sample = fill(path, args.events, args.days)
            took = time.perf_counter() - started
            size = path.stat().st_size / 1024 / 1024
            print(
                f"fill: {written} events over {args.days:g} days in {took:.1f}s "
                f"({written / took:,.0f}/s), {size:.0f} MiB"
            )
        else:
            print(f"fill: reusing {path} ({existing} events)")
            sample = []
        reader = EventReader.open(path)
        assert reader is not None
        with reader:
            now = time.time()
            if not sample:
                middle = reader.query(limit=1, until=now - args.days * 43200, ids=[3000])
                sample = [middle[0]["queue_id"]]
            qid = sample[len(sample) // 2]
            newest = reader.last_rowid()
            queries: list[tuple[str, Callable[[], Any]]] = [
                ("last 100 (default)", lambda: reader.query(limit=100)),
                ("--id 2448 --since 1h", lambda: reader.query(ids=[2448], since=now - 3600)),
                ("--category Interchange", lambda: reader.query(categories=["Interchange"])),
                (f"--queue-id {qid}", lambda: reader.query(queue_id=qid)),
                (
                    "--id 2400 --id 2401 --since 1d",
                    lambda: reader.query(ids=[2400, 2401], since=now - 86400),
                ),
                (
                    "--category NDR --since 1d",
                    lambda: reader.query(categories=["NDR"], since=now - 86400),
                ),
                (
                    "--since 1h --limit 0 (all of the last hour)",
                    lambda: reader.query(since=now - 3600, limit=0),
                ),
                (
                    "follow poll (--id 2448, after newest-20)",
                    lambda: reader.query(
                        ids=[2448], after_rowid=newest - 20, limit=1000, upto_rowid=newest
                    ),
                ),
            ]
            worst = 0.0
            print(f"queries on {reader.count():,} events ({args.runs} runs each):")
            for name, fn in queries:
                first, median, rows = timed(fn, args.runs)
                worst = max(worst, first, median)
                flag = "" if max(first, median) < TARGET_MS else "  OVER TARGET"
                print(
                    f"  {name:<46} first {first:7.1f} ms  median {median:7.1f} ms  "
                    f"rows {rows}{flag}"
                )
        if args.writer:
            sink = EventStoreSink(capacity=args.writer + 1)
            writer = EventStoreWriter(path, sink, max_events=args.events)
            fields = {
                "queue_id": "BENCH",
                "recipient": "a@b.test",
                "connector": "postoffice",
                "reply": "250 2.0.0 ok",
                "delays": "0.1/0.003",
                "attempts": 1,
            }
            base = time.time()
            for n in range(args.writer):
                sink.queue.append((catalog.SENT, dict(fields), base + n * 1e-4))
            started = time.perf_counter()
            writer.flush()
            took = time.perf_counter() - started
            count = count_events(path)
            print(
                f"writer: {args.writer} events through the sink and writer into the full "
                f"store in {took:.2f}s ({args.writer / took:,.0f}/s, pruning as it goes); "
                f"store now {count:,} events"
            )
        if args.cli:
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mailgate",
                    "events",
                    "--data-dir",
                    str(root),
                    "--id",
                    "2448",
                    "--since",
                    "1h",
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            took = (time.perf_counter() - started) * 1000
            print(
                f"cli: `mailgate events --id 2448 --since 1h --json` {took:.0f} ms "
                f"({len(json.loads(result.stdout))} events, Python start-up included)"
            )
        print(
            f"worst query: {worst:.1f} ms (target < {TARGET_MS:.0f} ms): "
            f"{'ok' if worst < TARGET_MS else 'MISSED'}"
        )
        return 0 if worst < TARGET_MS else 1
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
