"""The scheduler thread: lease expiry, wake-ups for deferred work coming due, purging.

Every second it releases leases that ran out (a thread or process died holding
them) and wakes the threads of any connector whose earliest waiting recipient is
due; every few minutes it purges finished messages older than keep_done. All of
it is indexed queries; nothing scans the queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mailgate.interchange.wakeup import Wakeup
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.store import QueueReader, QueueStore
from mailgate.supervise.handle import ThreadHandle

TICK = 1.0
PURGE_EVERY = 300.0
STORE_WAIT = 120.0


class Scheduler:
    def __init__(
        self,
        store: QueueStore,
        wakeup: Wakeup,
        events: EventLog,
        connectors: Sequence[str],
        *,
        keep_done: float,
    ) -> None:
        self.store = store
        self.wakeup = wakeup
        self.events = events
        self.connectors = tuple(connectors)
        self.keep_done = keep_done

    def __call__(self, handle: ThreadHandle) -> None:
        reader = self.store.reader()
        next_purge = time.monotonic() + PURGE_EVERY
        try:
            while not handle.wait(TICK):
                handle.busy()
                self._expire()
                self._wake_due(reader)
                if time.monotonic() >= next_purge:
                    self._purge()
                    next_purge = time.monotonic() + PURGE_EVERY
                handle.progress()
                handle.idle()
        finally:
            reader.close()

    def _expire(self) -> None:
        count = self.store.expire_leases().result(STORE_WAIT)
        if count:
            self.events.emit(catalog.LEASES_RELEASED, count=count, why="after lease expiry")
            self.wakeup.notify(*self.connectors)

    def _wake_due(self, reader: QueueReader) -> None:
        now = time.time()
        due = [c for c in self.connectors if (reader.next_due(c) or now + 1) <= now]
        if due:
            self.wakeup.notify(*due)

    def _purge(self) -> None:
        count = self.store.purge_done(self.keep_done).result(STORE_WAIT)
        if count:
            self.events.emit(catalog.MESSAGES_PURGED, count=count, age=f"{self.keep_done:.0f}s")
