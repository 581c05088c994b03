"""What the start-up check of the queue costs: SQLite's quick_check on a queue of N MB.

    .venv/bin/python bench/quick_check.py [--mb 100] [--body 5000] [--runs 3] [--dir DIR]

Builds `<dir>/queue.db` (a fresh temporary directory unless --dir is given) through the
queue's own API, `--body`-byte messages of one recipient each, held undelivered (the
worst case: every body is still stored), until the file reaches `--mb` megabytes. Then
times `SqliteBackend.initialize(check=True)` (what the master or a single-process
service runs once per start, Q159305) against `initialize()`, from the page cache
(warm) and after evicting the file from it with posix_fadvise (cold, as after a reboot).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mailgate.model import NewMessage, NewRecipient
from mailgate.queue.commit import DirectWriter
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore

BATCH = 500


def build(path: Path, megabytes: int, body_size: int) -> int:
    backend = SqliteBackend(path, durable=False)
    backend.initialize()
    writer = DirectWriter(backend)
    store = QueueStore(backend, writer)
    body = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * (body_size // 78)
    count = 0
    try:
        while path.stat().st_size < megabytes << 20:
            for _ in range(BATCH):
                count += 1
                message = NewMessage(
                    queue_id=f"B{count:010d}",
                    sender="bench@example.org",
                    recipients=(NewRecipient(f"u{count}@example.test", "postoffice"),),
                    body=body,
                    received_at=time.time(),
                    client="bench",
                )
                store.enqueue(message).result()
    finally:
        writer.close()
    return count


def evict(path: Path) -> None:
    for each in (path, path.with_name(path.name + "-wal")):
        if each.exists():
            fd = os.open(each, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(path: Path, *, check: bool, cold: bool) -> float:
    if cold:
        evict(path)
    began = time.perf_counter()
    SqliteBackend(path).initialize(check=check)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--body", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    path = directory / "queue.db"
    if not path.exists():
        began = time.perf_counter()
        count = build(path, args.mb, args.body)
        print(f"built {path}: {count} messages in {time.perf_counter() - began:.1f}s")
    print(f"{path}: {path.stat().st_size / (1 << 20):.0f} MB")
    for cold in (False, True):
        for check in (False, True):
            times = [timed(path, check=check, cold=cold) for _ in range(args.runs)]
            label = f"{'cold' if cold else 'warm'} initialize(check={check})"
            print(f"{label:<32} median {statistics.median(times) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
