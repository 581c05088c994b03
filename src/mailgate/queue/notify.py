"""Wake-ups between nodes: PostgreSQL LISTEN/NOTIFY, with polling as the fallback.

A commit that made work due wakes its connector's idle threads in this process (and,
by datagram, the interchange process of this node: wakeup.py). On a shared PostgreSQL
queue the other nodes must hear of it too: `NodeWakeup.notify` also hands the
connector names to the node's WakeChannel, whose `listen` thread (supervised, on a
connection of its own outside the pool) sends them as one NOTIFY per turn, at most a
tenth of a second later, and turns the NOTIFYs of the other nodes into local
wake-ups. Sending never blocks the caller (a commit's effects must be cheap): the names
wait in a set for the thread. A payload is `TOKEN|name,name` (`*`: everything); a
channel ignores its own token, so a node is not woken twice by its own commits. A lost
connection is event 4001 and a reconnect a second later; meanwhile, and for any lost
NOTIFY, the interchange threads' and the scheduler's polling still find the work: a
wake-up is a hint, the queue is the truth. SQLite (one node) has no channel.

The same thread also hears an administrator's cancels (`announce_cancel`, channel
mailgate_cancel, payload JSON {queue_id, owners}): `mailgate queue hold|delete|bounce`
on any node revokes the leases in the store, and the node whose threads hold them stops
those attempts as a local command would (interchange/inflight.py). A cancel lost with
the connection costs only time: the revoked lease already discards the outcome.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Backend
from mailgate.queue.wakeup import Wakeup
from mailgate.supervise.handle import ThreadHandle

if TYPE_CHECKING:  # psycopg only for a PostgreSQL queue: 90 ms of every process start
    import psycopg

    from mailgate.queue.postgres import PostgresBackend

CHANNEL = "mailgate_due"
CANCEL_CHANNEL = "mailgate_cancel"
MAX_OWNERS = 50  # lease owners of one message's attempts in one cancel (8000 bytes at most)
Cancel = Callable[[str, list[str]], object]  # (queue id, lease owners): stop those attempts
TURN = 0.1  # seconds the thread listens before it sends what was announced meanwhile
EVERYTHING = "*"
MAX_NAMES = 64  # a payload stays far below PostgreSQL's 8000 bytes


class WakeChannel:
    def __init__(
        self, backend: PostgresBackend, events: EventLog, counters: Counters | None = None
    ) -> None:
        self._backend = backend
        self._events = events
        self._counters = counters or Counters()
        self.token = secrets.token_hex(6)
        self._pending: set[str] = set()
        self._lock = threading.Lock()  # the pending set only
        self.sent = 0
        self.heard = 0
        self.listening = False  # LISTEN is in force on the thread's connection

    def announce(self, names: Iterable[str]) -> None:
        """Tell the other nodes, soon, that work became due for these connectors."""
        with self._lock:
            self._pending.update(names)

    def run(
        self,
        handle: ThreadHandle,
        hear: Callable[[list[str] | None], None],
        cancel: Cancel | None = None,
    ) -> None:
        """The `listen` thread: send what was announced, hear the others (`hear(None)`:
        everything is due) and the administrator's cancels (`cancel`)."""
        import psycopg  # this channel exists only on a PostgreSQL queue

        conn: psycopg.Connection[tuple[object, ...]] | None = None
        try:
            while not handle.stopping:
                handle.progress()
                try:
                    if conn is None:
                        conn = self._backend.open_connection()
                        conn.execute(f"LISTEN {CHANNEL}")
                        if cancel is not None:
                            conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                        self.listening = True
                    self._send(conn)
                    for note in conn.notifies(timeout=TURN, stop_after=MAX_NAMES):
                        if note.channel == CANCEL_CHANNEL and cancel is not None:
                            _cancel_heard(note.payload, cancel)
                        elif note.channel == CHANNEL:
                            self._heard(note.payload, hear)
                except psycopg.Error as exc:
                    self._events.emit(catalog.STORE_ERROR, operation="listen for other nodes",
                                      error=f"{self._backend.where}: {exc}")  # fmt: skip
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn, self.listening = None, False
                    handle.wait(1.0)
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _send(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with self._lock:
            names, self._pending = sorted(self._pending), set()
        if not names:
            return
        if EVERYTHING in names or len(names) > MAX_NAMES:
            names = [EVERYTHING]
        try:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.token}|{','.join(names)}"))
        except BaseException:
            self.announce(names)  # sent on the next connection
            raise
        self.sent += 1
        self._counters.add(metrics.NODE_WAKEUPS, direction="sent")

    def _heard(self, payload: str, hear: Callable[[list[str] | None], None]) -> None:
        token, _, listed = payload.partition("|")
        if token == self.token:
            return
        self.heard += 1
        self._counters.add(metrics.NODE_WAKEUPS, direction="heard")
        names = [n for n in listed.split(",") if n][:MAX_NAMES]
        hear(None if EVERYTHING in names else names)


def _postgres(backend: Backend) -> PostgresBackend | None:
    """`backend` if it is a PostgresBackend, asked without importing queue/postgres.py
    (and psycopg): while that module is not loaded, no PostgresBackend exists."""
    module = sys.modules.get("mailgate.queue.postgres")
    if module is None or not isinstance(backend, module.PostgresBackend):
        return None
    return cast("PostgresBackend", backend)


def wake_channel(
    backend: Backend, events: EventLog, counters: Counters | None = None
) -> WakeChannel | None:
    """The node's channel to the others, where the store is shared (PostgreSQL)."""
    postgres = _postgres(backend)
    return None if postgres is None else WakeChannel(postgres, events, counters)


def announce_now(backend: Backend, names: Iterable[str] = (EVERYTHING,)) -> None:
    """Wake every node's threads for `names` at once (a caller that may block: the node
    thread, after it released a dead node's leases). Nothing for SQLite; raises
    StoreError if the NOTIFY cannot be sent."""
    if _postgres(backend) is None:
        return
    conn = backend.connect()
    try:
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, f"|{','.join(names)}"))
    finally:
        conn.close()


def announce_cancel(backend: Backend, queue_id: str, owners: Iterable[str]) -> bool:
    """Tell every node to stop the attempts on `queue_id` under these lease owners (their
    leases revoked by the caller's committed transaction). False where the store is not
    shared (SQLite: no other node); raises StoreError if the NOTIFY cannot be sent."""
    if _postgres(backend) is None:
        return False
    payload = json.dumps({"queue_id": queue_id, "owners": sorted(owners)[:MAX_OWNERS]})
    conn = backend.connect()
    try:
        conn.execute("SELECT pg_notify(?, ?)", (CANCEL_CHANNEL, payload))
    finally:
        conn.close()
    return True


def _cancel_heard(payload: str, cancel: Cancel) -> None:
    """A cancel from the channel; one that does not parse is ignored (only mailgate
    sends there, and a cancel is a hint: the revoked lease is the truth)."""
    try:
        note = json.loads(payload)
        queue_id, owners = str(note["queue_id"]), [str(o) for o in note["owners"]]
    except (ValueError, KeyError, TypeError):
        return
    cancel(queue_id, owners[:MAX_OWNERS])


class NodeWakeup(Wakeup):
    """The Wakeup of a process that delivers: its notifications also reach the other
    nodes, once a channel is attached (`channel`); theirs come in through `hear`."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: WakeChannel | None = None

    def notify(self, *connectors: str) -> None:
        super().notify(*connectors)
        channel = self.channel
        if channel is not None and connectors:
            channel.announce(connectors)

    def hear(self, names: list[str] | None) -> None:
        """Another node's wake-up: woken here, not passed on."""
        if names is None:
            super().notify_all()
        else:
            super().notify(*names)
