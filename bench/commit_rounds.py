"""Group commit on each queue store: how many enqueues a second one committer takes, in
how many batches, and what a batch costs, with N threads submitting at once.

    PYTHONPATH=. .venv/bin/python bench/commit_rounds.py [--threads 20] [--messages 50]

SQLite: a file in a temporary directory (WAL, synchronous=FULL). PostgreSQL: a schema of
its own at MAILGATE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test), dropped
after. Each message has one recipient and a 5 KiB body, as in bench/throughput.py.
Printed per store: messages/s, batches, mean batch, mean commit seconds per batch, and
for PostgreSQL the committer's round trips per batch, BEGIN and COMMIT included
(each wait for the server's reply, counted under psycopg: tests/support/pg_rounds.py;
queue/pg_pipeline.py sends a batch that reads nothing in one), pipelined batches run
again statement by statement (`replayed`: none in a clean run) and the server's
WAL fsyncs per batch (pg_stat_wal: one per COMMIT, none per statement; other clients
of the server add to it).
Run from the repository root with PYTHONPATH=. (it uses tests/support/stores.py).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from tests.support import pg_rounds
from tests.support.stores import admin, open_store

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe.events import EventLog
from mailgate.queue.commit import Committer
from mailgate.queue.store import QueueStore
from mailgate.supervise.handle import ThreadHandle

BODY = b"Subject: bench\r\n\r\n" + b"x" * 5120 + b"\r\n"


def message() -> NewMessage:
    return NewMessage(
        queue_id=new_queue_id(),
        sender="s@example.org",
        recipients=(NewRecipient("u1@po.bench.test", "postoffice"),),
        body=BODY,
        received_at=time.time(),
        client="bench [127.0.0.1]",
    )


def run(kind: str, threads: int, messages: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_store(kind, Path(tmp)) as backend,
        pg_rounds.counting() as trips,  # the committer thread's alone are reported
    ):
        committer = Committer(backend, EventLog())
        handle = ThreadHandle("commit", "commit", None)
        thread = threading.Thread(
            target=committer.run, args=(lambda: handle.stopping, handle.progress)
        )
        thread.start()
        store = QueueStore(backend, committer)
        syncs = _wal_syncs() if kind == "postgres" else 0
        futures: list[Future[Any]] = []
        barrier = threading.Barrier(threads + 1)

        def submit() -> None:
            barrier.wait()
            for _ in range(messages):
                futures.append(store.enqueue(message()))
                futures[-1].result(60)  # like an SMTP session: the next after the 250

        workers = [threading.Thread(target=submit) for _ in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        started = time.monotonic()
        for worker in workers:
            worker.join()
        wait(futures, 60)
        elapsed = time.monotonic() - started
        handle.stop_event.set()
        committer.wake()
        thread.join(10)
        stats = committer.statistics()
        backend.close()  # a backend's statistics reach pg_stat_wal when its session ends
        syncs = _wal_syncs() - syncs if kind == "postgres" else 0
        total = threads * messages
        return {
            "store": kind,
            "msgs_per_s": round(total / elapsed),
            "batches": stats.batches,
            "mean_batch": round(stats.operations / stats.batches, 1),
            "ms_per_batch": round(1000 * elapsed / stats.batches, 2),
            "round_trips_per_batch": (
                round(trips.of(thread) / stats.batches, 2) if kind == "postgres" else "-"
            ),
            "replayed": stats.replayed,
            # The server's WAL fsyncs over the run (every client of the server counts).
            "wal_syncs_per_batch": round(syncs / stats.batches, 2) if kind == "postgres" else "-",
        }


def _wal_syncs() -> int:
    with admin() as conn:
        return int(conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    for kind in args.stores.split(","):
        print(run(kind, args.threads, args.messages))


if __name__ == "__main__":
    main()
