"""The worker-to-master channel (master/channel.py, master/inbox.py) carries a flow of events
in few writes and reads (issue 14): the first message after a quiet spell goes at once, the
ones that follow within the pace go together, in order, none lost; the master reads many
lines from one read and writes each event to its sinks, in order."""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass

from mailgate.master.channel import Outbox
from mailgate.master.inbox import WorkerInbox
from mailgate.observe import catalog
from mailgate.observe.events import EventLog, HumanFormatter
from mailgate.supervise.handle import ThreadHandle
from tests.support.process import wait_for
from tests.unit.test_events import ListHandler


class Writes(io.BytesIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[dict[str, object]]] = []
        self.lock = threading.Lock()

    def write(self, data: object) -> int:
        assert isinstance(data, bytes)
        with self.lock:
            self.writes.append([json.loads(line) for line in data.splitlines()])
        return len(data)

    def events(self) -> list[list[object]]:
        with self.lock:
            return [[m["n"] for m in w if m.get("type") == "event"] for w in self.writes]


def test_events_that_keep_coming_go_in_one_write_in_order() -> None:
    stream = Writes()
    outbox = Outbox(stream, pace=1.0)  # long, so "within the pace" holds on a slow machine
    handle = ThreadHandle("channel-out", "channel", None)
    thread = threading.Thread(target=outbox.writer(dict), args=(handle,))
    thread.start()
    try:
        outbox.put({"type": "event", "n": 0})
        wait_for(lambda: [0] in stream.events(), 5, what="the first event, at once")
        for n in range(1, 6):
            outbox.put({"type": "event", "n": n})
        wait_for(lambda: [1, 2, 3, 4, 5] in stream.events(), 5, what="the rest, in one write")
    finally:
        handle.stop_event.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [n for w in stream.events() for n in w] == [0, 1, 2, 3, 4, 5]


@dataclass
class Worker:
    name: str = "receive-1"
    buffer: bytes = b""
    last_heard: float = 0.0
    last_words: str = ""
    heartbeats: int = 0
    status: dict[str, object] | None = None


def test_the_master_writes_every_event_of_one_read_in_order() -> None:
    events = EventLog()
    sink = ListHandler()
    sink.setFormatter(HumanFormatter())
    events.add_sink(sink)
    inbox = WorkerInbox([], events)
    worker = Worker()

    def line(n: int) -> bytes:
        fields = {"worker": "receive-1", "role": "receive", "pid": n, "reason": f"r{n}"}
        message = {"type": "event", "id": catalog.WORKER_EXITING.id, "ts": 1.0 + n,
                   "fields": fields, "pid": n, "thread": "receive-1/smtp"}  # fmt: skip
        return json.dumps(message).encode() + b"\n"

    read, write = os.pipe()
    try:
        os.write(write, line(1) + b"not json\n" + line(2) + b'{"type": "status"}\n' + line(3)[:9])
        assert inbox._read(worker, read)  # type: ignore[arg-type]
        assert worker.last_heard > 0 and worker.buffer == line(3)[:9]
        os.write(write, line(3)[9:])
        assert inbox._read(worker, read)  # type: ignore[arg-type]
    finally:
        os.close(read)
        os.close(write)
    assert [text.rsplit(": ", 1)[-1] for text in sink.lines] == ["r1", "r2", "r3"], sink.lines
    assert worker.heartbeats == 1 and worker.last_words == "r3"
