"""What one SMTP session cannot go below on this machine, whatever the server is written in.

    .venv/bin/python bench/floor.py [--messages 5000] [--size 5120] [--syncs 2000] [--runs 3]
        [--dir DIR]

Three parts, each the best any implementation of a durable single-session MTA can do here:

1. The conversation: Postfix's smtp-source (`-d -s 1 -m MESSAGES -l SIZE`, one recipient)
   against Postfix's smtp-sink, C against C over loopback, nothing kept: the round trips of
   EHLO once, then MAIL, RCPT, DATA and the body for each message.
2. The flush: overwrite SIZE bytes at the start of a file in DIR and fdatasync it, and the
   same for 54 KiB (what one message's commit writes to mailgate's WAL with 2 KiB pages):
   the cheapest durable write of one message, without a file system journal commit.
3. A durable SQLite commit of one message-sized row (plain sqlite3, WAL, synchronous=FULL,
   one table with a blob): what any SQLite-backed queue pays per message at one session;
   bench/sqlite_pages.py measures mailgate's own commit (its schema and indexes).

Printed: each part's time per message (median of --runs), and the floor of one session:
the conversation plus one durable write, of a plain file (2) or of an SQLite commit (3),
with the rate each allows. The directory must be on the disk being measured (default: a
temporary directory beside this repository, not /tmp, which may be tmpfs). Nothing of
mailgate is imported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from measure import SMTP_SINK, SMTP_SOURCE, BenchError, SmtpSink, git_describe, smtp_source

WAL_BYTES = 54 * 1024  # one 5 KiB message's WAL frames with 2 KiB pages (bench/sqlite_pages.py)


def conversation_ms(messages: int, size: int, source: str, sink_path: str) -> float:
    """ms per message of smtp-source against smtp-sink, one persistent session."""
    sink = SmtpSink(sink_path)
    try:
        run = smtp_source(
            sink.port, sessions=1, messages=messages, length=size, sender="s@floor.test",
            recipient="r@floor.test", timeout=60 + messages / 100, path=source,
        )  # fmt: skip
        if run.error:
            raise BenchError(run.error)
        return 1000 * run.seconds / messages
    finally:
        sink.stop()


def fdatasync_ms(directory: Path, size: int, count: int) -> float:
    """Mean ms of overwriting `size` bytes at offset 0 and fdatasync, `count` times."""
    path = directory / f"overwrite-{size}"
    data = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)  # allocated and on disk: what follows overwrites, as a reused WAL does
        started = time.perf_counter()
        for _ in range(count):
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
        return 1000 * (time.perf_counter() - started) / count
    finally:
        os.close(fd)
        path.unlink()


def sqlite_commit_ms(directory: Path, size: int, count: int) -> float:
    """Mean ms of one durable transaction inserting one `size`-byte row, `count` times."""
    path = directory / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA page_size=2048")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        body = os.urandom(size)
        started = time.perf_counter()
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO m (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
        return 1000 * (time.perf_counter() - started) / count
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000, help="smtp-source -m")
    p.add_argument("--size", type=int, default=5120, help="smtp-source -l, and the row's bytes")
    p.add_argument("--syncs", type=int, default=2000, help="flushes and commits timed per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", help="where the flushes are measured (the disk under test)")
    p.add_argument("--smtp-source", default=SMTP_SOURCE)
    p.add_argument("--smtp-sink", default=SMTP_SINK)
    args = p.parse_args()
    if min(args.messages, args.size, args.syncs, args.runs) < 1:
        p.error("--messages, --size, --syncs and --runs must be positive")
    for tool in (args.smtp_source, args.smtp_sink):
        if not Path(tool).exists():
            p.error(f"{tool} is missing (Debian package postfix)")
    parent = Path(args.dir) if args.dir else Path(__file__).resolve().parent.parent
    if not parent.is_dir():
        p.error(f"--dir {parent} is not a directory")
    directory = Path(tempfile.mkdtemp(prefix="floor-", dir=parent))
    figures: dict[str, list[float]] = {}
    try:
        for run in range(1, args.runs + 1):
            parts = {
                "conversation": conversation_ms(
                    args.messages, args.size, args.smtp_source, args.smtp_sink
                ),
                f"fdatasync {args.size} B": fdatasync_ms(directory, args.size, args.syncs),
                f"fdatasync {WAL_BYTES // 1024} KiB": fdatasync_ms(
                    directory, WAL_BYTES, args.syncs
                ),
                "SQLite commit": sqlite_commit_ms(directory, args.size, args.syncs),
            }
            for name, value in parts.items():
                figures.setdefault(name, []).append(value)
            print(f"  run {run}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    except BenchError as exc:
        print(f"floor: {exc}")
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')}, mailgate {git_describe()}, {directory.parent}; "
        f"median of {args.runs} run(s), ms per message:"
    )
    for name, value in median.items():
        print(f"  {name:22} {value:7.3f}")
    for label, durable in (
        ("a file", median[f"fdatasync {args.size} B"]),
        ("SQLite", median["SQLite commit"]),
    ):
        floor = median["conversation"] + durable
        rate = f"{1000 / floor:,.0f} msg/s at one session"
        print(f"  floor, queue in {label:7}{floor:7.3f}  ({rate})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
