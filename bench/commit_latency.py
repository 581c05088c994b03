"""Group commit on PostgreSQL across a slow link: one batch's time through a proxy that
delays every server-to-client chunk, so the round trips show as multiples of the delay.

    PYTHONPATH=. .venv/bin/python bench/commit_latency.py [--delay-ms 20] [--batch 10]

A cross-check of bench/commit_rounds.py's count that does not look inside psycopg: a
loopback TCP proxy (asyncio, in a thread) between the committer and the server at
MAILGATE_TEST_PG, a schema of its own (dropped after). Each run queues `--batch`
one-recipient messages, then starts a committer, which takes them as one batch; printed:
each run's milliseconds from its start to the last future resolved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time

from tests.support.stores import pg_schema

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe.events import EventLog
from mailgate.queue.commit import Committer
from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.store import QueueStore
from mailgate.supervise.handle import ThreadHandle


def message() -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="s@example.org",
        recipients=(NewRecipient("u1@po.bench.test", "postoffice"),),
        body=b"Subject: bench\r\n\r\n" + b"x" * 5120 + b"\r\n",
        received_at=now,
        client="bench [127.0.0.1]",
    )


def start_proxy(server: tuple[str, int], delay: float) -> int:
    """A delaying proxy to `server` on a free loopback port (a daemon thread); its port."""
    ports: list[int] = []

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, wait: float) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if wait:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
        dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*server)
        await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, delay))

    async def main() -> None:
        proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.append(proxy.sockets[0].getsockname()[1])
        await proxy.serve_forever()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    while not ports:
        time.sleep(0.01)
    return ports[0]


def one_batch(backend: PostgresBackend, size: int) -> float:
    committer = Committer(backend, EventLog())
    store = QueueStore(backend, committer)
    handle = ThreadHandle("commit", "commit", None)
    futures = [store.enqueue(message()) for _ in range(size)]
    thread = threading.Thread(target=committer.run, args=(lambda: handle.stopping, handle.progress))
    started = time.monotonic()
    thread.start()
    for future in futures:
        future.result(60)
    elapsed = time.monotonic() - started
    handle.stop_event.set()
    committer.wake()
    thread.join(10)
    assert committer.statistics().batches == 1
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with pg_schema() as (_, url):
        PostgresBackend(url).upgrade()
        host, port = url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
        proxy = start_proxy((host, int(port)), args.delay_ms / 1000)
        backend = PostgresBackend(url.replace(f"{host}:{port}", f"127.0.0.1:{proxy}", 1))
        backend.give(backend.take())  # the connection is opened outside the runs
        try:
            runs = [one_batch(backend, args.batch) for _ in range(args.runs)]
        finally:
            backend.close()
    shown = ", ".join(f"{1000 * r:.0f}" for r in runs)
    print(f"batch of {args.batch} through a {args.delay_ms:g} ms link: {shown} ms")


if __name__ == "__main__":
    main()
