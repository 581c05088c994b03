"""The queue store: what stages and tools call to enqueue, claim, record, administer, read.

Writes go through a writer (the group Committer inside the service, a DirectWriter
in command-line tools) and return Futures that complete once the change is durable.
The store owns what a commit owes afterwards (queue/effects.py): the wake-ups of the
connectors work became due for, and the events of the reports it queued; it runs
them from the Future, after the commit and only if it succeeded, so no caller does.
Reads use a `QueueReader` (reader.py), one per thread, opened inside that thread.
Nothing here loads the whole queue: claims and reads are bounded, indexed queries.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mailgate.model import Claim, NewMessage, Outcome
from mailgate.queue import admin, expiry, leases, ops, reroute, track
from mailgate.queue import effects as after
from mailgate.queue.backend import SQLITE, Backend, Connection
from mailgate.queue.commit_sync import effects_kept, run_effects
from mailgate.queue.dsn_source import ReportBuilder, ReportQueue
from mailgate.queue.effects import Aftermath, Effects
from mailgate.queue.reader import QueueReader
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.revoke import Revoked

if TYPE_CHECKING:
    from mailgate.queue.inline import InlineWriter

T = TypeVar("T")
STORE_WAIT = 120.0
"""How long a stage waits for one of its writes to commit before it gives up. The commit
thread is supervised: one stuck on the disk or the writer lock is reported long before."""


class Writer(Protocol):
    def submit(self, name: str, op: Callable[[Connection], T]) -> Future[T]: ...


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
        effects: Effects | None = None,
    ) -> None:
        self.backend = backend
        self._writer = writer
        self.policy = policy or RetryPolicy()
        self.lease = lease
        self.max_internal_failures = max_internal_failures
        self._clock = clock
        # Set once at wiring time (use_reports): queue the reports finished messages owe,
        # and delay warnings; and what a commit owes afterwards.
        self.on_done = on_done
        self.delay_warner: ops.OnDone | None = None
        self.effects = effects or Effects()
        # Set at wiring time where the store can commit in the caller's thread (inline.py).
        self.inline: InlineWriter | None = None

    def use_reports(self, builder: ReportBuilder) -> None:
        """Queue the reports `builder` (dsn.generate.BounceGenerator) builds: the bounces
        of finished messages and the delay warnings, each in the commit that owes it."""
        reports = ReportQueue(builder)
        self.on_done, self.delay_warner = reports, reports.warn_delayed

    def _submit(
        self,
        name: str,
        op: Callable[[Connection], T],
        aftermath: Callable[[T], Aftermath] | None = None,
    ) -> Future[T]:
        future = self._writer.submit(name, op)
        return future if aftermath is None else self.effects.follow(name, future, aftermath)

    def enqueue(self, message: NewMessage) -> Future[Any]:
        """Queue a message; the future's value is the on_done result if it finished at once."""
        on_done = self.on_done
        return self._submit(
            "enqueue", lambda c: ops.insert_message(c, message, on_done), after.enqueued(message)
        )

    def enqueue_now(
        self, message: NewMessage, defer: Callable[[Callable[[], None]], object] | None = None
    ) -> Future[Any] | None:
        """`enqueue` committed in the calling thread, done when this returns, if the writer
        lock is free this instant (inline.py); None (nothing done) if not, or if this store
        cannot: then `enqueue` it. The same effects follow the commit: at once, or, with
        `defer` (an event loop's call_soon), handed to it as one callable, so that the
        caller answers its client before the wake-ups are sent."""
        inline = self.inline
        if inline is None:
            return None
        on_done = self.on_done
        future = inline.try_submit("enqueue", lambda c: ops.insert_message(c, message, on_done))
        if future is None:
            return None
        if defer is None:
            return self.effects.follow("enqueue", future, after.enqueued(message))
        with effects_kept() as later:
            self.effects.follow("enqueue", future, after.enqueued(message))
        if later:
            defer(functools.partial(run_effects, later))
        return future

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
        return self._submit(
            "record",
            lambda c: ops.record_outcomes(c, outcomes, owner, policy, limit, now, on_done),
            after.recorded(now),
        )

    def warn_delayed(self, older_than: float) -> Future[list[Any]]:
        """Queue delay warnings for messages still waiting after `older_than` seconds."""
        now, warner = self._clock(), self.delay_warner
        if warner is None:
            done: Future[list[Any]] = Future()
            done.set_result([])
            return done
        return self._submit(
            "warn-delayed",
            lambda c: ops.warn_delayed(c, now - older_than, now, warner),
            after.warned,
        )

    def origin_known(self, origin: str) -> Future[bool]:
        return self._writer.submit("origin-known", lambda c: ops.origin_known(c, origin))

    def expire_leases(self) -> Future[int]:
        now = self._clock()
        return self._submit("expire-leases", lambda c: ops.expire_leases(c, now), _all_due_if_any)

    def release_leases(self, owner_prefix: str | None = None) -> Future[int]:
        now = self._clock()
        return self._submit(
            "release-leases", lambda c: ops.release_leases(c, now, owner_prefix), _all_due_if_any
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
        return self._submit(
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
            after.leases_ended,
        )

    def expire_waiting(self, cursor: expiry.Cursor | None) -> Future[expiry.ExpiryPass]:
        """Bounce waiting recipients of messages past the lifetime (one bounded walk)."""
        now, lifetime, on_done = self._clock(), self.policy.lifetime, self.on_done
        return self._submit(
            "expire-waiting",
            lambda c: expiry.expire_waiting(c, now, lifetime, cursor, on_done),
            after.expired,
        )

    def reroute_vanished(
        self, known: Collection[str], route: reroute.Route
    ) -> Future[list[reroute.Rerouted]]:
        """Re-route (or bounce) waiting recipients of connectors not in `known`."""
        now, on_done, known = self._clock(), self.on_done, frozenset(known)
        return self._submit(
            "reroute",
            lambda c: reroute.reroute_vanished(c, known, route, now, on_done),
            after.rerouted,
        )

    def index_tracking(self) -> Future[int]:
        """Index the tracking keys of the next batch of messages queued since the last
        call (queue/track.py); the Future gives how many (track.BATCH: there is more)."""
        if self.backend.dialect is not SQLITE:  # its column indexes: nothing to write
            done: Future[int] = Future()
            done.set_result(0)
            return done
        return self._writer.submit("track", track.index_new)

    def purge_done(self, older_than: float) -> Future[int]:
        before = self._clock() - older_than
        return self._writer.submit("purge", lambda c: ops.purge_done(c, before))

    # --- the administrator's commands (queue/admin.py), each one transaction -------------------
    def hold(
        self, queue_id: str | None, connector: str | None = None, *, revoke_leases: bool = False
    ) -> Future[admin.Changed]:
        now = self._clock()
        return self._submit(
            "hold", lambda c: admin.hold(c, queue_id, now, connector, revoke_leases=revoke_leases)
        )

    def release(self, queue_id: str | None, connector: str | None = None) -> Future[admin.Changed]:
        now = self._clock()
        return self._submit(
            "release", lambda c: admin.release(c, queue_id, now, connector), after.changed
        )

    def retry(self, queue_id: str | None, connector: str | None = None) -> Future[admin.Changed]:
        now = self._clock()
        return self._submit(
            "retry", lambda c: admin.retry(c, queue_id, now, connector), after.changed
        )

    def take_over(self, queue_id: str) -> Future[tuple[Revoked, ...]]:
        now = self._clock()
        return self._submit("take-over", lambda c: admin.take_over(c, queue_id, now))

    def delete(self, queue_id: str, *, ndr: bool = False) -> Future[admin.Finished]:
        """Remove a message; with `ndr`, first bounce its open recipients and queue the report."""
        now, on_done = self._clock(), self.on_done if ndr else None
        return self._submit(
            "delete",
            lambda c: admin.delete(c, queue_id, now, ndr=ndr, on_done=on_done),
            after.finished,
        )

    def return_to_sender(self, queue_id: str) -> Future[admin.Finished]:
        now, on_done = self._clock(), self.on_done
        return self._submit(
            "bounce", lambda c: admin.return_to_sender(c, queue_id, now, on_done), after.finished
        )

    def reader(self) -> QueueReader:
        """A reader with its own connection; call from the thread that will use it."""
        return QueueReader(self.backend.connect(), self._clock)


def _all_due_if_any(count: int) -> Aftermath:
    """Leases put back in the queue make work due, on any connector."""
    return Aftermath(everything=count > 0)
