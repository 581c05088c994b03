"""The master's `channel` thread: events, heartbeats and replies from every worker.

It reads every worker's stdout (JSON lines, see channel.py) with one selector:
events are written to the master's own sinks (one event log for the service),
heartbeats become each worker's status, replies complete the master's pending
calls. A line that is not JSON, or names no known type, is skipped. Asked to stop,
it reads on until every worker is gone, so their last events are not lost.
"""

from __future__ import annotations

import json
import os
import selectors
import time

from mailgate.master.processes import WorkerProcess
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.supervise.handle import ThreadHandle


class WorkerInbox:
    """Body of the `channel` thread."""

    def __init__(self, workers: list[WorkerProcess], events: EventLog) -> None:
        self.workers = workers
        self.events = events

    def __call__(self, handle: ThreadHandle) -> None:
        selector = selectors.DefaultSelector()
        registered: dict[int, WorkerProcess] = {}
        try:
            while not handle.stopping or any(w.alive for w in self.workers):
                handle.progress()
                for worker in self.workers:
                    stdout = worker.proc.stdout if worker.proc is not None else None
                    if (
                        stdout is not None
                        and not stdout.closed
                        and stdout.fileno() not in registered
                    ):
                        selector.register(stdout.fileno(), selectors.EVENT_READ)
                        registered[stdout.fileno()] = worker
                if not registered:
                    handle.wait(0.2)
                    if handle.stopping:
                        return
                    continue
                for key, _ in selector.select(timeout=0.2):
                    worker = registered[int(key.fd)]
                    if not self._read(worker, int(key.fd)):
                        selector.unregister(key.fd)
                        del registered[int(key.fd)]
                        worker.channel_closed = True
        finally:
            selector.close()

    def _read(self, worker: WorkerProcess, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        heard = False
        with self.events.batch():  # the read's events reach each file in one write
            for line in lines:
                heard = self._message(worker, line) or heard
        if heard:  # once per read: a read carries many lines under load
            worker.last_heard = time.time()
        return True

    def _message(self, worker: WorkerProcess, line: bytes) -> bool:
        """Handle one line; False if it was not a message (not JSON, no type)."""
        try:
            message = _decode(line.decode())
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            return False
        if kind == "event":
            event = catalog.CATALOG.get(message.get("id", -1))
            if event is catalog.WORKER_EXITING:
                worker.last_words = str((message.get("fields") or {}).get("reason", ""))
            if event is not None:
                self.events.forward(
                    event,
                    message.get("fields") or {},
                    float(message.get("ts") or time.time()),
                    int(message.get("pid") or 0),
                    str(message.get("thread") or worker.name),
                )
        elif kind == "status":
            worker.status = message
            worker.heartbeats += 1
        elif kind == "reply":
            worker.reply(message)
        return True


_decode = json.JSONDecoder().decode  # json.loads of bytes first guesses their encoding
