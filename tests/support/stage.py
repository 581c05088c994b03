"""One stage's object under test, in-process, over a real queue: a SQLite file in the test's
tmp_path, the real group committer on a thread of its own, the queue's real effects (its
wake-ups and the events of the reports it queues), and an event log that keeps what was
emitted. Thread bodies run on plain threads with a handle of their own, stopped and
joined (with a deadline) on the way out; no subprocess, no network.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe.catalog import Category, EventType, Level
from mailgate.observe.events import EventLog
from mailgate.queue.commit import Committer
from mailgate.queue.effects import Effects
from mailgate.queue.history import MessageHistory
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.handle import ThreadHandle

JOIN = 10.0


class Seen(logging.Handler):
    """An event sink that keeps (event, fields) of everything emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[EventType, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event, fields, _ = record.mailgate_event  # type: ignore[attr-defined]
        self.items.append((event, dict(fields)))

    def of(self, event: EventType) -> list[dict[str, Any]]:
        """The fields of every `event` emitted so far, in order."""
        return [fields for seen, fields in list(self.items) if seen.id == event.id]

    def ids(self) -> list[int]:
        return [event.id for event, _ in list(self.items)]


@dataclass
class Stage:
    """The queue a stage works on, and what it emitted."""

    backend: SqliteBackend
    store: QueueStore
    wakeup: Wakeup
    events: EventLog
    seen: Seen
    threads: list[tuple[threading.Thread, ThreadHandle]] = field(default_factory=list)

    def enqueue(
        self, *recipients: str, connector: str = "postoffice", at: float | None = None, **kw: Any
    ) -> str:
        """Queue one message for `recipients` (durably), received `at` (now); its queue id."""
        now = time.time() if at is None else at
        message = NewMessage(
            queue_id=new_queue_id(now),
            sender=kw.pop("sender", "sender@example.org"),
            recipients=tuple(NewRecipient(r, connector) for r in recipients),
            body=kw.pop("body", b"Subject: test\r\n\r\nbody\r\n"),
            received_at=now,
            client="test [127.0.0.1]",
            **kw,
        )
        self.store.enqueue(message).result(JOIN)
        return message.queue_id

    def history(self, queue_id: str) -> MessageHistory:
        reader = self.store.reader()
        try:
            found = reader.message_history(queue_id)
        finally:
            reader.close()
        assert found is not None, f"{queue_id} is not in the queue"
        return found

    def states(self, queue_id: str) -> dict[str, str]:
        """Each recipient's state, by address."""
        return {r.address: r.state for r in self.history(queue_id).recipients}

    def run(
        self, body: Callable[[ThreadHandle], None], name: str = "t-1", generation: int = 1
    ) -> ThreadHandle:
        """Run a thread body on a thread of its own until the stage ends (or it returns)."""
        handle = ThreadHandle(name, "test", None, generation)
        thread = threading.Thread(target=body, args=(handle,), name=name, daemon=True)
        thread.start()
        self.threads.append((thread, handle))
        return handle

    def stop(self, handle: ThreadHandle) -> None:
        """Ask one thread to stop, wake it, and wait for it to end."""
        for thread, each in self.threads:
            if each is handle:
                handle.stop_event.set()
                self.wakeup.notify_all()
                thread.join(JOIN)
                assert not thread.is_alive(), f"{handle.name} did not stop"


@contextlib.contextmanager
def stage(
    tmp_path: Path,
    *,
    policy: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Stage]:
    """A fresh queue in `tmp_path` with its committer running (the store reads `clock`);
    everything stopped after."""
    backend = SqliteBackend(tmp_path / "queue.db")
    backend.initialize()
    events, seen = EventLog({c: Level.MAXIMUM for c in Category}), Seen()
    events.add_sink(seen)
    committer = Committer(backend, events)
    commit = ThreadHandle("commit", "commit", None)
    committing = threading.Thread(
        target=committer.run, args=(lambda: commit.stopping, commit.progress), daemon=True
    )
    committing.start()
    wakeup = Wakeup()
    policy = policy or RetryPolicy(60, 600, 3600)
    store = QueueStore(backend, committer, policy=policy, lease=30, clock=clock)
    store.effects = Effects(wakeup, events)
    made = Stage(backend, store, wakeup, events, seen)
    try:
        yield made
    finally:
        for _, handle in made.threads:
            made.stop(handle)
        commit.stop_event.set()
        committer.wake()
        committing.join(JOIN)
        assert not committing.is_alive(), "the committer did not stop"
