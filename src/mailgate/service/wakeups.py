"""The `listen` part of a delivering process: wake-ups to and from the other nodes.

Where the queue is shared (PostgreSQL), the process's NodeWakeup gets the store's
WakeChannel, and the supervised `listen` thread sends this node's wake-ups and turns
the others' into local ones (queue/notify.py), and hands an administrator's cancels
from any node to `cancel` (DeliveryPart.cancel: the attempts under revoked leases this
process holds stop). Without a shared store it does nothing.
"""

from __future__ import annotations

from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Backend
from mailgate.queue.notify import Cancel, NodeWakeup, WakeChannel, wake_channel
from mailgate.service.part import Part
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor


class NodeWakePart(Part):
    def __init__(
        self,
        events: EventLog,
        backend: Backend,
        wakeup: NodeWakeup,
        counters: Counters,
        cancel: Cancel | None = None,
    ) -> None:
        self.wakeup = wakeup
        self.cancel = cancel
        self.channel: WakeChannel | None = wake_channel(backend, events, counters)
        wakeup.channel = self.channel

    def start(self, sup: Supervisor) -> None:
        if self.channel is not None:
            # It waits on the database by design: its liveness is its turn, not its work.
            sup.spawn("listen", "listen", self._run, stall_detection=False)

    def _run(self, handle: ThreadHandle) -> None:
        assert self.channel is not None
        self.channel.run(handle, self.wakeup.hear, self.cancel)
