"""The channel between the master and a worker: JSON lines over the worker's stdin/stdout.

Worker to master (stdout): `{"type": "event", ...}` for every event (the master
writes all sinks, so there is one event log), `{"type": "status", ...}` every
second (its threads and health: the heartbeat), `{"type": "reply", ...}`.
Master to worker (stdin): `{"id": N, "command": "pause", "args": {...}}`.
A worker's threads never block on the channel: events go to a bounded queue that
the `channel-out` thread drains (events are dropped and counted if the master
stops reading). The worker stops when its stdin closes (the master is gone).
Writes are paced: the first message after a quiet spell goes at once, then at most one
write every PACE seconds carries whatever queued meanwhile, so a steady flow of events
(one per message received) wakes this thread and the master's reader once per PACE,
not once per event (issue 14); order is kept, and nothing waits longer than PACE.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from mailgate.control.local import LocalSurface
from mailgate.control.surface import Command, command_table
from mailgate.service.part import Part
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor

QUEUE_LIMIT = 20_000
BATCH = 200  # messages per write to the master
PACE = 0.01  # seconds between two writes, at the most frequent
HEARTBEAT = 1.0
_RECORD_KEY = "mailgate_event"


class Outbox:
    """The worker's outgoing channel: non-blocking `put`, drained by `writer` (a thread body)."""

    def __init__(self, stream: BinaryIO | None = None, pace: float = PACE) -> None:
        self._stream = stream or os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        self.pace = pace
        # SimpleQueue (C, no Condition to notify) bounded by hand: `put` runs for every event
        # on the SMTP thread, and queue.Queue's locking was 3% of a receive process.
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.dropped = 0

    def put(self, message: dict[str, Any]) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            self.dropped += 1
        else:
            self._queue.put(message)

    def writer(self, status: Callable[[], dict[str, Any]]) -> Callable[[ThreadHandle], None]:
        """The `channel-out` thread body: sends queued messages and a status every second."""

        def run(handle: ThreadHandle) -> None:
            next_status = sent = 0.0
            while True:
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + HEARTBEAT
                    self._send({"type": "status", "dropped": self.dropped, **status()})
                    handle.progress()
                try:
                    batch = [self._queue.get(timeout=0.2)]
                except queue.Empty:
                    if handle.stopping:
                        return
                    continue
                pause = sent + self.pace - time.monotonic()
                if pause > 0 and self._queue.qsize() < BATCH - 1:
                    handle.wait(pause)  # what comes meanwhile goes in the same write
                while len(batch) < BATCH:  # what else is waiting goes in the same write
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._send(*batch)
                sent = time.monotonic()

        return run

    def drain(self) -> None:
        """Send whatever is still queued, from the calling thread (the worker's last act)."""
        while True:
            try:
                self._send(self._queue.get_nowait())
            except queue.Empty:
                return

    def _send(self, *messages: dict[str, Any]) -> None:
        data = b"".join(json.dumps(m, default=str).encode() + b"\n" for m in messages)
        with contextlib.suppress(OSError, ValueError):  # the master is gone: stdin EOF ends us
            self._stream.write(data)
            self._stream.flush()


class ForwardSink(logging.Handler):
    """Event log sink of a worker: every event goes to the master over the channel."""

    def __init__(self, outbox: Outbox, process: str) -> None:
        super().__init__()
        self.outbox = outbox
        self.process = process
        self.pid = os.getpid()  # a worker is started, never forked

    def handle(self, record: logging.LogRecord) -> bool:
        """`emit` without the handler's lock: the outbox's queue is thread-safe, and this
        runs on the emitting thread (the SMTP thread, once per message)."""
        try:
            self.emit(record)
        except Exception:  # a sink never breaks its caller
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        event, fields, when = getattr(record, _RECORD_KEY)
        self.outbox.put(
            {
                "type": "event",
                "id": event.id,
                "ts": when,
                "fields": fields,
                "pid": self.pid,
                "thread": f"{self.process}/{record.threadName}",
            }
        )


def inbox_reader(
    fd: int, commands: dict[str, Command], outbox: Outbox, on_eof: Callable[[], None]
) -> Callable[[ThreadHandle], None]:
    """The `channel-in` thread body: runs the master's commands; EOF means the master died.

    It waits with select() in short steps, so a stop request ends it promptly."""

    def run(handle: ThreadHandle) -> None:
        buffer = b""
        while not handle.stopping:
            handle.progress()
            readable, _, _ = select.select([fd], [], [], 0.1)
            if not readable:
                continue
            data = os.read(fd, 65536)
            if not data:
                on_eof()
                return
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                handle.busy()
                reply = _execute(line, commands)
                if reply is not None:
                    outbox.put(reply)
                handle.idle()

    return run


def _execute(line: bytes, commands: dict[str, Command]) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
        ident, name, args = request.get("id"), request["command"], request.get("args") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    command = commands.get(name)
    if command is None:
        return {"type": "reply", "id": ident, "ok": False, "error": f"unknown command {name!r}"}
    try:
        return {"type": "reply", "id": ident, "ok": True, "result": command(args)}
    except Exception as exc:  # a failing command is an answer
        return {"type": "reply", "id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


class ChannelPart(Part):
    """A worker's side of the channel: `channel-out` sends its events and a heartbeat every
    second (its health, threads, counters and connectors), `channel-in` runs the master's
    commands on its control surface and stops the worker when the master is gone."""

    def __init__(
        self,
        outbox: Outbox,
        surface: LocalSurface,
        role: str,
        stop: Callable[[str], None],
        fd: int | None = None,
    ) -> None:
        self.outbox = outbox
        self.surface = surface
        self.role = role
        self.stop = stop
        self.fd = sys.stdin.fileno() if fd is None else fd

    def heartbeat(self) -> dict[str, Any]:
        surface = self.surface
        return {
            "pid": os.getpid(),
            "role": self.role,
            "health": surface.process.health(),
            "threads": surface.threads(),
            "counters": surface.counters(),
            "connectors": surface.live_connectors(),
            "stuck": surface.process.supervisor.stuck(),  # the master's call: master.py
        }

    def start(self, sup: Supervisor) -> None:
        sup.spawn("channel-out", "channel", self.outbox.writer(self.heartbeat))
        inbox = inbox_reader(
            self.fd, command_table(self.surface), self.outbox, lambda: self.stop("stdin closed")
        )
        sup.spawn("channel-in", "channel", inbox, stall_detection=False)
