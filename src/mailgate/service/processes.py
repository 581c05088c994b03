"""Which parts each kind of process runs: the one place that says it.

- single process (`mailgate run --single-process`): control, routing, the queue,
  delivery, pickup and receive, all in one; it holds the lock.
- receive worker: routing, a durable queue and receive on the sockets its master
  opened; it wakes the interchange worker with a datagram.
- interchange worker: routing, a queue whose claims and outcomes skip the fsync,
  delivery with the wake-up listener, and pickup (on a durable committer).
The master's own process is assembled in master/run.py. Parts start in list order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.config.schema import Config
from mailgate.control.local import LocalSurface
from mailgate.observe.events import EventLog
from mailgate.queue.notify import NodeWakeup
from mailgate.queue.wakeup import RemoteWakeup, wakeup_path
from mailgate.receive.listeners import Listeners
from mailgate.service import wiring
from mailgate.service.control import ControlPart
from mailgate.service.delivery import DeliveryPart, PickupPart
from mailgate.service.hooks import install_excepthooks
from mailgate.service.host import Host
from mailgate.service.nodes import Membership, NodePart
from mailgate.service.parts import QueuePart, ReceivePart, RoutingPart
from mailgate.service.signals import Signals
from mailgate.service.wakeups import NodeWakePart


def local_surface(host: Host, role: str = "single") -> LocalSurface:
    """The control surface of a process built here (one per thread that reads it)."""
    return LocalSurface(
        host, host.part(QueuePart).reader, host.counters, host.find(DeliveryPart), role
    )


def single_process(
    config: Config, events: EventLog, source: Callable[[], Config] | None = None
) -> Host:
    host = Host(config, events, owner=True, source=source)
    routing = RoutingPart(config)
    wakeup, counters = NodeWakeup(), host.counters
    queue = QueuePart(config, events, routing, wakeup, durable=True)
    delivery = DeliveryPart(
        config, events, queue.store, routing, wakeup, counters, remote_wakeups=False
    )
    host.parts = [
        ControlPart(config, events, lambda: local_surface(host)),
        routing,
        queue,
        NodeWakePart(events, queue.backend, wakeup, counters, delivery.cancel),
        delivery,
        PickupPart(config, events, queue.pickup_store, routing, counters),
        ReceivePart(config, events, queue.store, routing, counters),
        node_part(host, lambda: local_surface(host).threads()),
    ]
    return host


def node_part(host: Host, work: Callable[[], list[dict[str, Any]]]) -> NodePart:
    """The lock holder's `node` thread: heart-beats into the queue, declares dead nodes."""

    def membership() -> Membership:
        assert host.membership is not None, "joined at start"
        return host.membership

    return NodePart(host.config, host.events, membership, work, host.fail)


def receive_worker(config: Config, events: EventLog, listeners: Listeners | None = None) -> Host:
    host = Host(config, events, owner=False)
    routing = RoutingPart(config)
    wakeup = RemoteWakeup(wakeup_path(config.data_dir))  # commits wake the interchange worker
    queue = QueuePart(config, events, routing, wakeup, durable=True)
    host.parts = [
        routing,
        queue,
        ReceivePart(config, events, queue.store, routing, host.counters, listeners),
    ]
    return host


def interchange_worker(
    config: Config, events: EventLog, listeners: Listeners | None = None
) -> Host:
    host = Host(config, events, owner=False)
    routing = RoutingPart(config)
    wakeup, counters = NodeWakeup(), host.counters
    queue = QueuePart(config, events, routing, wakeup, durable=False)
    delivery = DeliveryPart(
        config, events, queue.store, routing, wakeup, counters, remote_wakeups=True
    )
    host.parts = [
        routing,
        queue,
        NodeWakePart(events, queue.backend, wakeup, counters, delivery.cancel),
        delivery,
        PickupPart(config, events, queue.pickup_store, routing, counters),
    ]
    return host


WORKERS: dict[str, Callable[[Config, EventLog, Listeners | None], Host]] = {
    "receive": receive_worker,
    "interchange": interchange_worker,
}


def run_single(config: Config, source: Callable[[], Config] | None = None) -> int:
    """`mailgate run --single-process`: returns the exit status, 0 only for a clean stop."""
    events = wiring.open_events(config)
    install_excepthooks(events)
    host = single_process(config, events, source)
    signals = Signals(events, host.request_stop)
    signals.install()  # before anything starts: no signal is lost
    return host.run(signals)
