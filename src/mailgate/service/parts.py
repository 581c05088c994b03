"""The parts every mail-handling process is made of: routing, the queue, receiving.

- RoutingPart: the address map, the postoffice, the recipient policy and the bounce
  generator that receive, delivery and pickup share; a reload swaps the routes in
  one step, built before anything changes.
- QueuePart: the store and its group committer (`commit`). Only processes that accept
  mail need each commit on disk before they answer; the interchange process's claims
  and outcomes may be lost to a power failure and redone (postoffice delivery is
  idempotent), which spares its fsyncs and shortens its hold on SQLite's write lock.
  Pickup removes a file once its message is committed, so where the main committer
  is not durable, pickup gets a durable one (`commit-durable`).
- ReceivePart: the SMTP listener (`smtp`): the certificate, credentials and ports are
  opened in `prepare`, so a bad file or a port in use stops the start, naming it.
"""

from __future__ import annotations

import contextlib

from mailgate.config.schema import Config
from mailgate.errors import ConfigError
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.commit import Committer
from mailgate.queue.commit_sync import CommitSyncer, DeferredSync
from mailgate.queue.effects import Effects
from mailgate.queue.inline import InlineWriter
from mailgate.queue.open import open_backend
from mailgate.queue.reader import QueueReader
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore
from mailgate.queue.wakeup import Wakeup
from mailgate.receive.listeners import Listeners, open_listeners
from mailgate.receive.server import SmtpListener
from mailgate.service import wiring
from mailgate.service.part import Apply, Part, Phase
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Body, Supervisor


class RoutingPart(Part):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.address_map = wiring.address_map(config)
        self.postoffice = wiring.postoffice(config, self.address_map)
        routes = wiring.router(config, self.address_map)
        self.policy = wiring.recipient_policy(config, self.postoffice, routes)
        self.bounces = wiring.bounces(config, self.policy)

    def reload(self, new: Config) -> Apply:
        unbuilt = wiring.unbuilt_routes(self.config, new)
        if unbuilt:  # the connector set is fixed at start: mail routed there would sit
            raise ConfigError(unbuilt)
        routes = wiring.router(new, self.address_map)  # raises before anything is swapped

        def apply() -> None:
            self.policy.replace(routes, new.smtp.relay_networks)

        return apply


class QueuePart(Part):
    def __init__(
        self,
        config: Config,
        events: EventLog,
        routing: RoutingPart,
        wakeup: Wakeup,
        *,
        durable: bool,
    ) -> None:
        # The group committers wait for the writer lock as long as it takes (lock_timeout
        # None): the supervisor reports a commit thread stuck there, with its stack.
        self.backend = open_backend(
            config.queue, config.data_dir, durable=durable, lock_timeout=None
        )
        batch = config.queue.commit_batch
        # Where each commit must be on disk, the flush runs in its own thread, overlapping
        # the next batch's writing (commit_sync.py), if the store can flush apart.
        self.syncer: CommitSyncer | None = None
        if durable and isinstance(self.backend, DeferredSync):
            self.syncer = CommitSyncer(self.backend, events)
        self.committer = Committer(self.backend, events, max_batch=batch, syncer=self.syncer)
        self.flush_threads = config.queue.commit_flush_threads
        self.store = wiring.queue_store(config, self.committer, self.backend)
        if durable and isinstance(self.backend, SqliteBackend):
            # A receive process with one session commits its message itself (inline.py).
            self.store.inline = InlineWriter(self.backend, events)
        self.pickup_committer: Committer | None = None
        self.pickup_store = self.store
        if not durable:
            on_disk = open_backend(config.queue, config.data_dir, lock_timeout=None)
            self.pickup_committer = Committer(on_disk, events, max_batch=batch)
            self.pickup_store = wiring.queue_store(config, self.pickup_committer, on_disk)
        for store in {
            id(self.store): self.store,
            id(self.pickup_store): self.pickup_store,
        }.values():
            store.use_reports(routing.bounces)
            store.effects = Effects(wakeup, events)  # a commit wakes the work it made due

    def reader(self) -> QueueReader:
        return self.store.reader()

    def close(self) -> None:
        if self.store.inline is not None:  # its connection, before the clean-stop record
            self.store.inline.close()

    def prepare(self) -> None:
        # The lock holder checked the store (host.py) before any worker opened it.
        self.backend.initialize()

    def start(self, sup: Supervisor) -> None:
        for name, committer in self._committers():
            sup.spawn(
                name,
                "commit",
                _committer_body(committer),
                critical=True,
                on_stop=committer.wake,
                abandon=False,  # a second committer would wait on the same lock or disk
                on_fail=committer.fail_waiting,  # its callers must not wait out the stop
            )
        if self.syncer is not None:
            syncer = self.syncer
            for name in self._flushers():
                sup.spawn(
                    name, "commit",
                    lambda handle: syncer.run(
                        lambda: handle.stopping, handle.progress, handle.busy, handle.idle
                    ),
                    critical=True, on_stop=syncer.wake, abandon=False,
                    on_fail=syncer.fail_waiting,
                )  # fmt: skip

    def threads(self, phase: Phase) -> list[str]:
        if phase is not Phase.COMMIT:
            return []
        # The flush threads last: they end once the committer has and every batch is flushed.
        return [name for name, _ in self._committers()] + self._flushers()

    def _flushers(self) -> list[str]:
        """The flush threads' names: `commit-sync`, `commit-sync-2`, ... (none without a
        syncer). Several take batches from one queue: each batch is flushed by a flush that
        began after its COMMIT returned, whichever thread runs it."""
        if self.syncer is None:
            return []
        count = self.flush_threads
        return ["commit-sync"] + [f"commit-sync-{n}" for n in range(2, count + 1)]

    def _committers(self) -> list[tuple[str, Committer]]:
        found = [("commit", self.committer)]
        if self.pickup_committer is not None:
            found.append(("commit-durable", self.pickup_committer))
        return found


def _committer_body(committer: Committer) -> Body:
    def run(handle: ThreadHandle) -> None:
        committer.run(lambda: handle.stopping, handle.progress, handle.busy, handle.idle)

    return run


class ReceivePart(Part):
    """`listeners` are the sockets a receive worker inherited from its master; without
    them the part opens its own."""

    def __init__(
        self,
        config: Config,
        events: EventLog,
        store: QueueStore,
        routing: RoutingPart,
        counters: Counters,
        listeners: Listeners | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.store = store
        self.routing = routing
        self.counters = counters
        self.listeners = listeners
        self.listener: SmtpListener | None = None

    def prepare(self) -> None:
        listeners = self.listeners or open_listeners(self.config.smtp)  # PortInUse: the holder
        handler = wiring.receive_handler(
            self.config, self.store, self.routing.policy, self.events, self.counters,
            listeners.sessions,
        )  # fmt: skip
        self.listener = SmtpListener(
            handler, listeners.smtp, tls_sock=listeners.implicit_tls, tls_context=handler.tls
        )

    def start(self, sup: Supervisor) -> None:
        listener = self.listener
        assert listener is not None, "prepared"
        # Not abandoned when stalled: a second loop on the same listening socket would
        # have it closed under it when the wedged one wakes. The stall keeps the service
        # unhealthy (503, no watchdog ping), so its manager restarts it.
        sup.spawn(
            "smtp", "receive", listener, critical=True, on_stop=listener.request_stop,
            abandon=False,
        )  # fmt: skip

    def threads(self, phase: Phase) -> list[str]:
        return ["smtp"] if phase is Phase.INTAKE else []

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()  # already closed unless the smtp thread did not stop

    def listen(self) -> str | None:
        if self.listener is None:
            return None
        host, port = self.listener.address
        return f"{host}:{port}"
