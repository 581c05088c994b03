"""QueueReader: the one read path into the queue, for the service and for the tools.

Every read anyone outside queue/ needs is a method here, over one `Connection` owned by
one thread (opened inside it): what the stages need (a body, due work, counts), what
`mailgate track` and `queue show` need (history.py), what `queue list` and `summary`
need (listing.py), what `queue check` needs (check.py). Every query is bounded and
indexed, except the shape and the check, which look at every open recipient (or row)
as they must, in bounded memory. Read-only: nothing here changes the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.queue import check, history, listing, nodes, states
from mailgate.queue.backend import Backend, Connection
from mailgate.queue.revoke import Revoked, attempts_since


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Recipients per (connector, state) and the oldest waiting message's arrival time."""

    by_state: dict[tuple[str, str], int]
    oldest_waiting: dict[str, float]


class QueueReader:
    """Read-only queries on one connection, owned by one thread."""

    def __init__(self, conn: Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    def close(self) -> None:
        self._conn.close()

    def nodes(self, timeout: float) -> tuple[float, list[nodes.NodeRow]]:
        """(the store's time, every node sharing the queue), as `ctl status` shows them."""
        return nodes.node_view(self._conn, timeout)

    # --- the stages ------------------------------------------------------------------------------
    def body(self, queue_id: str) -> bytes | None:
        """A message's stored body; None once it finished (bodies are dropped then)."""
        row = self._conn.execute(
            "SELECT data FROM bodies WHERE message_id = ?", (queue_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def has_due(self, connector: str, now: float) -> bool:
        """Whether `connector` has a recipient due now or in flight: two index seeks, so
        the scheduler can ask every second whatever the queue's size."""
        due = self._conn.execute(
            f"SELECT 1 FROM recipients WHERE connector = ? AND state {states.WAITING} "
            "AND due_at <= ? LIMIT 1",
            (connector, now),
        ).fetchone()
        if due is not None:
            return True
        active = self._conn.execute(
            "SELECT 1 FROM recipients WHERE state = 'active' AND connector = ? LIMIT 1",
            (connector,),
        ).fetchone()
        return active is not None

    def due_load(self, connector: str, now: float) -> tuple[int, float | None]:
        """Recipients of `connector` due now or in flight, and the oldest one's arrival time.
        Looks at every due recipient: for a stall report, not for every tick (has_due)."""
        row = self._conn.execute(
            "SELECT COUNT(*), MIN(m.received_at) FROM recipients r "
            "JOIN messages m ON m.id = r.message_id WHERE r.connector = ? "
            f"AND r.state {states.WAITING} AND r.due_at <= ?",
            (connector, now),
        ).fetchone()
        active = self._conn.execute(
            "SELECT COUNT(*), MIN(m.received_at) FROM recipients r "
            "JOIN messages m ON m.id = r.message_id WHERE r.state = 'active' AND r.connector = ?",
            (connector,),
        ).fetchone()
        oldest = [float(x) for x in (row[1], active[1]) if x is not None]
        return int(row[0]) + int(active[0]), (min(oldest) if oldest else None)

    def counts(self) -> QueueCounts:
        """Open recipients per (connector, state), and per connector the arrival time of
        its oldest open message: the one with the lowest queue id (ids sort by arrival
        time, model.new_queue_id). Counted on the recipients_state index, one range per
        open state (O(open recipients), no table row read); the oldest is one seek per
        (connector, state) found and one message row."""
        by_state: dict[tuple[str, str], int] = {}
        for state, connector, count in self._conn.execute(
            "SELECT state, connector, COUNT(*) FROM recipients "
            f"WHERE state {states.OPEN_LISTED} GROUP BY state, connector"
        ).fetchall():
            by_state[(str(connector), str(state))] = int(count)
        first: dict[str, str] = {}
        for connector, state in by_state:
            row = self._conn.execute(
                "SELECT MIN(message_id) FROM recipients WHERE state = ? AND connector = ?",
                (state, connector),
            ).fetchone()
            if row is not None and row[0] is not None:
                lowest = str(row[0])
                first[connector] = min(first.get(connector, lowest), lowest)
        oldest: dict[str, float] = {}
        for connector, queue_id in first.items():
            row = self._conn.execute(
                "SELECT received_at FROM messages WHERE id = ?", (queue_id,)
            ).fetchone()
            if row is not None:
                oldest[connector] = float(row[0])
        return QueueCounts(dict(sorted(by_state.items())), oldest)

    # --- a message's life (track, queue show) ----------------------------------------------------
    def message_id(self, key: str) -> str | None:
        """The queue id `key` names, in any case; None if there is no such message."""
        return history.message_id(self._conn, key)

    def find(self, key: str, limit: int = 20) -> list[str]:
        """Queue ids a queue id, Message-ID or address designates, newest first."""
        return history.find(self._conn, key, limit)

    def message_history(self, queue_id: str) -> history.MessageHistory | None:
        """Everything the queue knows of one message, or None if it is not (or no longer) there."""
        return history.message_history(self._conn, queue_id)

    def first_recipient(self, queue_id: str) -> tuple[str, str] | None:
        """(address, state) of a message's first recipient: where a bounce's delivery stands."""
        return history.recipient_state(self._conn, queue_id)

    def attempts_since(self, revoked: Revoked) -> list[tuple[int, str, str]]:
        """What the attempt in flight on a revoked recipient came to (queue/revoke.py)."""
        return attempts_since(self._conn, revoked)

    # --- queue list, summary, check --------------------------------------------------------------
    def list_messages(
        self,
        *,
        connector: str | None = None,
        state: str | None = None,
        received_before: float | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[listing.QueuedMessage]:
        """Messages matching every filter given, oldest first, at most `limit` (listing.py)."""
        return listing.list_messages(
            self._conn,
            connector=connector,
            state=state,
            received_before=received_before,
            sender=sender,
            recipient=recipient,
            limit=limit,
            after=after,
        )

    def shape(self, now: float | None = None) -> dict[str, listing.ConnectorShape]:
        """Open recipients per connector by message age bucket and by state (qshape)."""
        return listing.queue_shape(self._conn, self._clock() if now is None else now)

    def check_store(self, *, lease_grace: float = 60.0, limit: int = 20) -> list[check.Problem]:
        """Rows that do not fit together (check.py); empty when the store is consistent."""
        return check.check_store(self._conn, self._clock(), lease_grace=lease_grace, limit=limit)

    def integrity(self, limit: int = 100) -> list[str]:
        """The backend's own check of its file (SQLite's quick_check); empty when sound."""
        return check.integrity_check(self._conn, limit)


def open_reader(backend: Backend) -> QueueReader | None:
    """A read-only reader for a tool; None if the queue does not exist (never created)."""
    conn = backend.connect_read_only()
    return None if conn is None else QueueReader(conn)
