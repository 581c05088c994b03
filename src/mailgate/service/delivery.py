"""The delivery parts: the scheduler and interchange threads of each connector, and pickup.

DeliveryPart runs `scheduler`, `<connector>-<n>` interchange threads and, in an
interchange worker (remote wake-ups), the `wakeup` listener for the datagrams of
the receive workers. A stalled interchange thread's leases go back to the queue at
once (its attempts count: a delivery that hangs every time is quarantined, not
retried forever). PickupPart runs `pickup` over the postoffice outboxes, with a
durable store. Both stop after receiving and before the committer.
"""

from __future__ import annotations

import contextlib
import socket
from concurrent.futures import Future
from typing import Any

from mailgate.config.schema import Config
from mailgate.connectors.limits import DestinationStatistics
from mailgate.errors import StoreError
from mailgate.interchange.connector import Connector
from mailgate.interchange.ended import report_ended
from mailgate.interchange.inflight import Cancelled, InFlight
from mailgate.interchange.scheduler import Scheduler
from mailgate.interchange.state import Connectors
from mailgate.interchange.worker import InterchangeThread, lease_owner
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.postoffice.flush import Flusher
from mailgate.queue.leases import LeasesEnded
from mailgate.queue.reader import QueueReader
from mailgate.queue.store import QueueStore
from mailgate.queue.wakeup import Wakeup, WakeupListener, bind_wakeup, wakeup_path
from mailgate.service import wiring
from mailgate.service.connectors import Built, node_connectors
from mailgate.service.part import Apply, Part, Phase
from mailgate.service.parts import RoutingPart
from mailgate.service.reload import live_part
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor


class DeliveryPart(Part):
    def __init__(
        self,
        config: Config,
        events: EventLog,
        store: QueueStore,
        routing: RoutingPart,
        wakeup: Wakeup,
        counters: Counters,
        *,
        remote_wakeups: bool,
    ) -> None:
        self.config = config
        self.events = events
        self.store = store
        self.routing = routing
        self.wakeup = wakeup
        self.counters = counters
        self.remote_wakeups = remote_wakeups
        self.connectors = Connectors(config.connectors)
        self.in_flight = InFlight()  # what each interchange thread delivers right now
        self.interchange_threads: list[str] = []
        self.delivery_connectors: dict[str, Connector] = {}
        self.thread_counts: dict[str, int] = {}
        self.built: list[Built] = []
        self.scheduler: Scheduler | None = None
        self.supervisor: Supervisor | None = None
        self.wakeup_socket: socket.socket | None = None
        self._reader: QueueReader | None = None
        self.flusher = Flusher()  # the postoffice's fsyncs, side by side (postoffice/flush.py)
        self.flush_threads: list[str] = []

    def prepare(self) -> None:
        if self.remote_wakeups:
            self.wakeup_socket = bind_wakeup(wakeup_path(self.config.data_dir))
        office = self.routing.postoffice
        self.built = wiring.delivery_connectors(
            self.config, office, self.events, self.counters, self.flusher
        )

    def start(self, sup: Supervisor) -> None:
        config = self.config
        self.supervisor = sup
        if self.wakeup_socket is not None:
            listener = WakeupListener(self.wakeup_socket, self.wakeup)
            sup.spawn("wakeup", "wakeup", listener, stall_detection=False)
        policy = self.routing.policy
        self.scheduler = Scheduler(
            self.store,
            self.wakeup,
            self.events,
            self.connectors,
            keep_done=config.queue.keep_done,
            stall_after=config.supervise.stall_after,
            threads_summary=self.threads_summary,
            delay_warning=config.dsn.delay_warning,
            counters=self.counters,
            route=lambda address: policy.route(address).connector,
            known_connectors=lambda: self.config.connectors,
        )
        sup.spawn("scheduler", "scheduler", self.scheduler)
        if "postoffice" in config.connectors:
            for n in range(1, config.postoffice.flush_threads + 1):
                name = f"postoffice-flush-{n}"
                sup.spawn(name, "flush", self.flusher.run, on_stop=self.flusher.wake)
                self.flush_threads.append(name)
        sv = config.supervise
        for built in self.built:
            connector, threads = built.connector, built.threads
            self.delivery_connectors[connector.name] = connector
            self.thread_counts[connector.name] = threads
            body = InterchangeThread(
                connector,
                self.store,
                self.wakeup,
                self.events,
                node=config.service.node,
                batch=built.batch,
                linger=built.linger,
                max_received=config.dsn.max_received,
                state=self.connectors[connector.name],
                recycle_after=sv.recycle_after,
                recycle_every=sv.recycle_every,
                counters=self.counters,
                in_flight=self.in_flight,
                # The connector says whether its extra threads are for a backlog only.
                helpers_on_backlog=getattr(connector, "helpers_on_backlog", False),
            )
            for n in range(1, threads + 1):
                name = f"{connector.name}-{n}"
                sup.spawn(
                    name,
                    "interchange",
                    body if n == 1 else body.helper(),
                    connector=connector.name,
                    critical=sv.exit_on_failure,
                    on_stop=self.wakeup.notify_all,
                    on_stall=self._release_stalled,
                )
                self.interchange_threads.append(name)

    def threads(self, phase: Phase) -> list[str]:
        if phase is Phase.DELIVERY:
            return list(self.interchange_threads)
        # The flush threads after every postoffice thread whose batch they may be syncing.
        return ["scheduler", *self.flush_threads] if phase is Phase.SCHEDULE else []

    def close(self) -> None:
        if self.wakeup_socket is not None:
            self.wakeup_socket.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def health(self) -> list[str]:
        sup, scheduler = self.supervisor, self.scheduler
        if sup is None or scheduler is None or sup.handle("scheduler") is None:
            return []
        return [f"connector {name} stalled" for name in scheduler.watch.stalled()]

    def reload(self, new: Config) -> Apply:
        def apply() -> None:
            self.config = live_part(self.config, new)  # the scheduler's known connectors

        return apply

    def summary(self) -> str:
        """Each connector's waiting and delivered counts (read on the main thread)."""
        waiting: dict[str, int] = {}
        with contextlib.suppress(StoreError):
            if self._reader is None:
                self._reader = self.store.reader()
            for (connector, _), count in self._reader.counts().by_state.items():
                waiting[connector] = waiting.get(connector, 0) + count
        return ", ".join(
            f"{c.name} {waiting.get(c.name, 0)} queued/{c.delivered} delivered"
            for c in self.connectors.by_name.values()
        )

    def _release_stalled(self, handle: ThreadHandle) -> None:
        """A stalled interchange thread's leases go back to the queue for others to retry;
        its attempts ended without an outcome and count."""
        owner = lease_owner(self.config.service.node, handle.name, handle.generation)
        ending = self.store.end_leases("its thread stalled", owner)
        why = f"held by stalled {handle.name}"

        def reported(done: Future[LeasesEnded]) -> None:
            if done.exception() is None:
                report_ended(self.events, done.result(), why)

        ending.add_done_callback(reported)  # not waited for: the monitor must never block

    def cancel(self, queue_id: str, owners: list[str]) -> list[Cancelled]:
        """Stop the attempts on `queue_id` under these (revoked) leases, each with event
        2463: asked over the control socket by a command on this node, or over the
        store's channel by one on another (queue/notify.py)."""
        found = self.in_flight.cancel(queue_id, owners)
        for item in found:
            self.events.emit(
                catalog.ATTEMPT_CANCELLED, thread=item.thread, queue_id=queue_id, how=item.how
            )
        return found

    def clear_down(self, names: list[str], by: str) -> list[str]:
        """An administrator wants delivery now: the named connectors forget that their
        destination was down (a smarthost marked down after a failure). The names cleared."""
        cleared = []
        for name in names:
            clear = getattr(self.delivery_connectors.get(name), "clear_down", None)
            if clear is not None and clear(by):
                cleared.append(name)
        return cleared

    def destination_state(self) -> dict[str, dict[str, Any]]:
        """Per connector: its interchange threads, the connections open to its destinations
        (idle ones among them, threads waiting at a limit) and, if its destination is marked
        down, the error that did it. Cheap: counts under the limits' lock, no I/O."""
        state: dict[str, dict[str, Any]] = {}
        for name, connector in self.delivery_connectors.items():
            shared = getattr(connector, "destinations", None)  # the postoffice has none
            stats: list[DestinationStatistics] = shared.statistics() if shared else []
            health = getattr(connector, "health", None)
            state[name] = {
                "threads": self.thread_counts.get(name, 0),
                "connections": sum(s.open for s in stats),
                "idle_connections": sum(s.idle for s in stats),
                "waiting_threads": sum(s.waiting for s in stats),
                "down": (health.down_error() or "") if health is not None else "",
            }
        return state

    def threads_summary(self, connector: str | None = None) -> str:
        if self.supervisor is None:
            return ""
        views = self.supervisor.statistics().threads
        return ", ".join(
            f"{v.name}={v.state}" for v in views if connector is None or v.connector == connector
        )


class PickupPart(Part):
    def __init__(
        self,
        config: Config,
        events: EventLog,
        store: QueueStore,
        routing: RoutingPart,
        counters: Counters,
    ) -> None:
        self.config = config
        self.events = events
        self.store = store  # a durable one: a file is removed once its message is on disk
        self.routing = routing
        self.counters = counters

    def start(self, sup: Supervisor) -> None:
        # Outboxes live in the postoffice tree: a node without it picks nothing up.
        if self.config.pickup.enabled and "postoffice" in node_connectors(self.config):
            routing = self.routing
            pickup = wiring.pickup(
                self.config, self.store, routing.policy, routing.address_map, self.events,
                self.counters,
            )  # fmt: skip
            sup.spawn("pickup", "pickup", pickup)

    def threads(self, phase: Phase) -> list[str]:
        return ["pickup"] if phase is Phase.INTAKE else []
