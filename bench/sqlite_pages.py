"""What a queue file's page size costs a commit: bytes written and time per queued message.

    python bench/sqlite_pages.py [--messages 3000] [--size 5120] [--pages 1024,2048,4096]
                                 [--big-mib 10] [--dir DIR]

For each page size, a fresh queue file (the service's own schema and indexes, made by
SqliteBackend.initialize) takes --messages messages of about --size bytes, each in its own
durable transaction (BEGIN IMMEDIATE, mailgate.queue.ops.insert_message, COMMIT with
synchronous=FULL: one fdatasync of the WAL per message, as a lone SMTP session's inline
commit does), then one message of --big-mib MiB is queued and its body read back. Prints,
per page size: messages/s, wall, user and system CPU ms per message, KiB written per message
(/proc/self/io write_bytes: what reached the block layer, WAL and checkpoints) and the big
body's write and read times. The directory must be on the disk being measured (default: a
temporary directory beside this file's repository, not /tmp, which may be tmpfs).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.queue import ops
from mailgate.queue.sqlite import SqliteBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_fill import body


def _written() -> int:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines() if line)
    return int(fields["write_bytes"])


def _message(size: int) -> NewMessage:
    now = time.time()
    queue_id = new_queue_id(now)
    return NewMessage(
        queue_id=queue_id,
        sender="bench@bench.test",
        recipients=(NewRecipient("user@po.test", "postoffice"),),
        body=body(queue_id, "user@po.test", size),
        received_at=now,
        client="bench [127.0.0.1]",
        header_message_id=f"<{queue_id}@bench.test>",
    )


def run(directory: Path, page_size: int, messages: int, size: int, big_mib: int) -> str:
    path = directory / f"queue-{page_size}.db"
    # Made here with the page size asked for; the backend's own PRAGMA is then a no-op.
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA page_size={page_size}")
    raw.execute("CREATE TABLE bench_first (x)")
    raw.execute("DROP TABLE bench_first")
    raw.commit()
    raw.close()
    backend = SqliteBackend(path)
    backend.initialize()
    conn = backend.connect()
    try:
        got = conn.execute("PRAGMA page_size").fetchone()[0]
        written, usage, started = (
            _written(),
            resource.getrusage(resource.RUSAGE_SELF),
            time.perf_counter(),
        )
        for _ in range(messages):
            conn.begin()
            ops.insert_message(conn, _message(size))
            conn.commit()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        kib = (_written() - written) / messages / 1024
        big = _message(big_mib * 1024 * 1024)
        t0 = time.perf_counter()
        conn.begin()
        ops.insert_message(conn, big)
        conn.commit()
        t1 = time.perf_counter()
        data = conn.execute("SELECT data FROM bodies WHERE message_id = ?", (big.queue_id,))
        assert len(data.fetchone()[0]) == len(big.body)
        t2 = time.perf_counter()
    finally:
        conn.close()
    return (
        f"page {got:>5}: {messages / wall:7.0f} msg/s, {wall / messages * 1e3:.3f} ms/msg, "
        f"user {(after.ru_utime - usage.ru_utime) / messages * 1e3:.3f} "
        f"sys {(after.ru_stime - usage.ru_stime) / messages * 1e3:.3f} ms/msg, "
        f"{kib:.1f} KiB written/msg; {big_mib} MiB body: queued {(t1 - t0) * 1e3:.0f} ms, "
        f"read {(t2 - t1) * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--pages", default="1024,2048,4096")
    parser.add_argument("--big-mib", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix=".sqlite-pages-", dir=args.dir))
    try:
        for page_size in (int(p) for p in args.pages.split(",")):
            print(run(directory, page_size, args.messages, args.size, args.big_mib), flush=True)
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
