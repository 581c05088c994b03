"""The queue store: what stages call to enqueue, claim, record and read.

Writes go through a writer (the group Committer inside the service, a
DirectWriter in command-line tools) and return Futures that complete once the
change is durable. Reads use a `QueueReader`, one per thread, opened inside
that thread. Nothing here loads the whole queue: claims and reads are bounded,
indexed queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mailgate.model import Claim, NewMessage, Outcome
from mailgate.queue import expiry, leases, ops, reroute
from mailgate.queue.backend import Backend, Connection
from mailgate.queue.retry import RetryPolicy

T = TypeVar("T")


class Writer(Protocol):
    def submit(self, name: str, op: Callable[[Connection], T]) -> Future[T]: ...


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Recipients per (connector, state) and the oldest waiting message's arrival time."""

    by_state: dict[tuple[str, str], int]
    oldest_waiting: dict[str, float]


class QueueStore:
    """Facade over a backend and a writer; safe to share between threads."""

    def __init__(
        self,
        backend: Backend,
        writer: Writer,
        *,
        policy: RetryPolicy | None = None,
        lease: float = 300.0,
        max_internal_failures: int = 3,
        clock: Callable[[], float] = time.time,
        on_done: ops.OnDone | None = None,
    ) -> None:
        self.backend = backend
        self._writer = writer
        self.policy = policy or RetryPolicy()
        self.lease = lease
        self.max_internal_failures = max_internal_failures
        self._clock = clock
        self.on_done = on_done  # set once at wiring time: queues bounces (dsn)
        self.delay_warner: ops.OnDone | None = None  # likewise: delay warnings (dsn)

    def enqueue(self, message: NewMessage) -> Future[Any]:
        """Queue a message; the future's value is the on_done result if it finished at once."""
        on_done = self.on_done
        return self._writer.submit("enqueue", lambda c: ops.insert_message(c, message, on_done))

    def claim(self, connector: str, owner: str, limit: int) -> Future[list[Claim]]:
        now, lease = self._clock(), self.lease
        return self._writer.submit(
            "claim", lambda c: ops.claim(c, connector, owner, limit, now, lease)
        )

    def record(self, outcomes: Sequence[Outcome], owner: str) -> Future[list[ops.Recorded]]:
        now, policy, limit, on_done = (
            self._clock(),
            self.policy,
            self.max_internal_failures,
            self.on_done,
        )
        return self._writer.submit(
            "record",
            lambda c: ops.record_outcomes(c, outcomes, owner, policy, limit, now, on_done),
        )

    def warn_delayed(self, older_than: float) -> Future[list[Any]]:
        """Queue delay warnings for messages still waiting after `older_than` seconds."""
        now, warner = self._clock(), self.delay_warner
        if warner is None:
            done: Future[list[Any]] = Future()
            done.set_result([])
            return done
        return self._writer.submit(
            "warn-delayed", lambda c: ops.warn_delayed(c, now - older_than, now, warner)
        )

    def origin_known(self, origin: str) -> Future[bool]:
        return self._writer.submit("origin-known", lambda c: ops.origin_known(c, origin))

    def expire_leases(self) -> Future[int]:
        now = self._clock()
        return self._writer.submit("expire-leases", lambda c: ops.expire_leases(c, now))

    def release_leases(self, owner_prefix: str | None = None) -> Future[int]:
        now = self._clock()
        return self._writer.submit(
            "release-leases", lambda c: ops.release_leases(c, now, owner_prefix)
        )

    def end_leases(
        self, reason: str, owner_prefix: str | None = None, *, expired_only: bool = False
    ) -> Future[leases.LeasesEnded]:
        """End leases without an outcome, counting each as an internal failure: the ones
        that ran out (`expired_only`) or one owner's (a stalled or dead thread's)."""
        now, limit, policy, on_done = (
            self._clock(),
            self.max_internal_failures,
            self.policy,
            self.on_done,
        )
        return self._writer.submit(
            "end-leases",
            lambda c: leases.end_leases(
                c,
                now,
                reason,
                max_internal=limit,
                policy=policy,
                on_done=on_done,
                owner_prefix=owner_prefix,
                expired_only=expired_only,
            ),
        )

    def expire_waiting(self, cursor: expiry.Cursor | None) -> Future[expiry.ExpiryPass]:
        """Bounce waiting recipients of messages past the lifetime (one bounded walk)."""
        now, lifetime, on_done = self._clock(), self.policy.lifetime, self.on_done
        return self._writer.submit(
            "expire-waiting", lambda c: expiry.expire_waiting(c, now, lifetime, cursor, on_done)
        )

    def reroute_vanished(
        self, known: Collection[str], route: reroute.Route
    ) -> Future[list[reroute.Rerouted]]:
        """Re-route (or bounce) waiting recipients of connectors not in `known`."""
        now, on_done, known = self._clock(), self.on_done, frozenset(known)
        return self._writer.submit(
            "reroute", lambda c: reroute.reroute_vanished(c, known, route, now, on_done)
        )

    def purge_done(self, older_than: float) -> Future[int]:
        before = self._clock() - older_than
        return self._writer.submit("purge", lambda c: ops.purge_done(c, before))

    def reader(self) -> QueueReader:
        """A reader with its own connection; call from the thread that will use it."""
        return QueueReader(self.backend.connect(), self._clock)


class QueueReader:
    """Read-only queries on one connection, owned by one thread."""

    def __init__(self, conn: Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock

    def close(self) -> None:
        self._conn.close()

    def body(self, queue_id: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT data FROM bodies WHERE message_id = ?", (queue_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def next_due(self, connector: str) -> float | None:
        """When the earliest waiting recipient of `connector` is due (index lookup)."""
        row = self._conn.execute(
            "SELECT MIN(due_at) FROM recipients WHERE connector = ? "
            "AND state IN ('queued', 'deferred')",
            (connector,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def due_load(self, connector: str, now: float) -> tuple[int, float | None]:
        """Recipients of `connector` due now or in flight, and the oldest one's arrival time."""
        row = self._conn.execute(
            "SELECT COUNT(*), MIN(m.received_at) FROM recipients r "
            "JOIN messages m ON m.id = r.message_id WHERE r.connector = ? "
            "AND r.state IN ('queued', 'deferred') AND r.due_at <= ?",
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
        by_state: dict[tuple[str, str], int] = {}
        for connector, state, count in self._conn.execute(
            "SELECT connector, state, COUNT(*) FROM recipients "
            "WHERE state NOT IN ('delivered', 'bounced') GROUP BY connector, state"
        ).fetchall():
            by_state[(connector, state)] = count
        oldest: dict[str, float] = {}
        for connector, received in self._conn.execute(
            "SELECT r.connector, MIN(m.received_at) FROM recipients r "
            "JOIN messages m ON m.id = r.message_id "
            "WHERE r.state NOT IN ('delivered', 'bounced') GROUP BY r.connector"
        ).fetchall():
            oldest[connector] = float(received)
        return QueueCounts(by_state, oldest)

    def recipient_states(self, queue_id: str) -> list[tuple[str, str, str | None]]:
        return [
            (row[0], row[1], row[2])
            for row in self._conn.execute(
                "SELECT address, state, last_reply FROM recipients WHERE message_id = ? "
                "ORDER BY id",
                (queue_id,),
            ).fetchall()
        ]
