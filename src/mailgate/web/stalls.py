"""Stall events as the dashboard counts them: a sink on the master's event log.

A stalled thread can be freed within a second (its connection aborted, its work
released), too fast for a sample every two seconds to see its state. The events say it
for sure: `StallWatch` counts every ThreadStalled (5003), ThreadAbandoned (5004) and
ConnectorStalled (5006) the process writes or forwards from its workers, and remembers
when each thread (by pid and name) last stalled, so the chart marks the moment and the
threads page shows a thread that stalled recently even once it runs again. A logging
handler like the event store's sink: it never blocks and never raises; its numbers are
read lock-free (a count and a dict swapped whole).
"""

from __future__ import annotations

import logging
import time

from mailgate.observe import catalog
from mailgate.observe.events import _RECORD_KEY

STALL_EVENTS = frozenset(
    {catalog.THREAD_STALLED.id, catalog.THREAD_ABANDONED.id, catalog.CONNECTOR_STALLED.id}
)
RECENT = 300.0  # seconds a past stall keeps a thread marked on the threads page


class StallWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._last: dict[tuple[int, str], float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            item = getattr(record, _RECORD_KEY, None)
            if item is None or item[0].id not in STALL_EVENTS:
                return
            _, fields, when = item
            self.count += 1
            thread = fields.get("thread")
            if thread:
                last = dict(self._last)
                last[(int(record.process or 0), str(thread))] = float(when)
                self._last = last
        except Exception:  # a log sink must never break its caller
            self.handleError(record)

    def last_stall(self, pid: object, thread: object) -> float | None:
        """When thread `thread` of process `pid` last stalled, if within RECENT seconds."""
        try:
            when = self._last.get((int(str(pid)), str(thread)))
        except ValueError:
            return None
        return when if when is not None and time.time() - when < RECENT else None
