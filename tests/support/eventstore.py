"""Driving the event store from tests: a writer thread with its own handle, and replays."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mailgate.observe.catalog import CATALOG
from mailgate.observe.events import _RECORD_KEY
from mailgate.observe.eventstore import store_path
from mailgate.observe.eventwriter import EventStoreSink, EventStoreWriter
from mailgate.supervise.handle import ThreadHandle


class Running:
    """A writer body in its own thread, stopped the way the supervisor stops it."""

    def __init__(self, writer: EventStoreWriter) -> None:
        self.writer = writer
        self.handle = ThreadHandle("events", "events", None)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="events", daemon=True)

    def _run(self) -> None:
        try:
            self.writer(self.handle)
        except BaseException as exc:
            self.error = exc
            raise

    def start(self) -> Running:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.handle.stop_event.set()
        self.writer.wake()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "writer did not stop"
        assert self.error is None, self.error


def replay(records: Iterable[dict[str, Any]], log_dir: Path) -> int:
    """Store events.jsonl records (with their own times) through a real sink and writer."""
    sink = EventStoreSink(capacity=1_000_000)
    for record in records:
        log_record = logging.LogRecord("mailgate.events", logging.INFO, "(replay)", 0, "", (), None)
        setattr(log_record, _RECORD_KEY, (CATALOG[record["id"]], record["fields"], record["ts"]))
        sink.handle(log_record)
    return EventStoreWriter(store_path(log_dir), sink).flush()
