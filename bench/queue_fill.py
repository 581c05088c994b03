"""Fill a mailgate queue fast, for bench/big_queue.py: run by the interpreter that runs mailgate.

    python bench/queue_fill.py QUEUE_DB COUNT --size 500 --batch 20000 --to ADDR [--to ADDR]

Inserts COUNT messages of about --size bytes, each with one recipient (the --to addresses in
turn) for the postoffice connector, through the queue's own write operation
(mailgate.queue.ops.insert_message, as the group committer runs it) in transactions of --batch
messages on a SqliteConnection, which holds the queue's writer lock for each one: the running
service's committers wait meanwhile, so it is meant for a service whose connector is paused.
Far faster than SMTP (one fsync per batch, not per few messages): a million messages in
minutes. Prints progress and, last, `filled=COUNT seconds=S`. Exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.queue import ops, track
from mailgate.queue.sqlite import SqliteBackend


def body(queue_id: str, recipient: str, size: int) -> bytes:
    header = (
        f"Received: from bench-fill by bench.test; queue id {queue_id}\r\n"
        f"From: <fill@bench.test>\r\nTo: <{recipient}>\r\nSubject: big queue {queue_id}\r\n"
        f"Message-ID: <{queue_id}@bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    lines = max(size - len(header), len(line)) // len(line)
    return header + line * lines


def fill(path: Path, count: int, size: int, batch: int, recipients: list[str]) -> float:
    conn = SqliteBackend(path).connect()
    started, done = time.monotonic(), 0
    try:
        while done < count:
            conn.begin()
            try:
                for n in range(done, min(count, done + batch)):
                    now = time.time()
                    queue_id = new_queue_id(now)
                    recipient = recipients[n % len(recipients)]
                    message = NewMessage(
                        queue_id=queue_id,
                        sender="fill@bench.test",
                        recipients=(NewRecipient(recipient, "postoffice"),),
                        body=body(queue_id, recipient, size),
                        received_at=now,
                        client="bench-fill [127.0.0.1]",
                        header_message_id=f"<{queue_id}@bench.test>",
                    )
                    ops.insert_message(conn, message)
                track.index_new(conn, batch)  # as the service's scheduler would have
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            done = min(count, done + batch)
            elapsed = time.monotonic() - started
            print(f"  filled {done}/{count} ({done / elapsed:.0f} msg/s)", flush=True)
    finally:
        conn.close()
    return time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("queue_db", type=Path)
    p.add_argument("count", type=int)
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--batch", type=int, default=20000)
    p.add_argument("--to", action="append", required=True, help="recipient address(es)")
    args = p.parse_args()
    seconds = fill(args.queue_db, args.count, args.size, args.batch, args.to)
    print(f"filled={args.count} seconds={seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
