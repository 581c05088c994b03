"""The control surface of one process: the single-process service, or one worker.

It reads the process's supervisor, counters and queue, and acts on its delivery
(connector pause flags, wake-ups, the in-flight registry, thread recycling) when the
process delivers; a receive worker has no delivery, and those commands raise. `cancel`
takes the in-flight registry's and a session's locks, which workers hold only for a
few assignments; every other command reads lock-free views or flips flags.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from mailgate.control.surface import ControlSurface, Process, thread_json
from mailgate.interchange.inflight import Cancelled, InFlight
from mailgate.interchange.state import Connectors
from mailgate.observe.counters import Counters
from mailgate.queue.reader import QueueReader
from mailgate.queue.wakeup import Wakeup


class Delivery(Protocol):
    """What the surface acts on in a process that delivers (service/delivery.py)."""

    connectors: Connectors
    wakeup: Wakeup
    in_flight: InFlight
    interchange_threads: list[str]

    def clear_down(self, names: list[str], by: str) -> list[str]: ...

    def cancel(self, queue_id: str, owners: list[str]) -> list[Cancelled]: ...

    def destination_state(self) -> dict[str, dict[str, Any]]: ...


class LocalSurface(ControlSurface):
    def __init__(
        self,
        process: Process,
        open_reader: Callable[[], QueueReader],
        counters: Counters,
        delivery: Delivery | None,
        role: str = "single",
    ) -> None:
        super().__init__(process, open_reader)
        self._counters = counters
        self.delivery = delivery
        self.role = role

    def processes(self) -> list[dict[str, Any]]:
        return [{"pid": os.getpid(), "role": self.role, "threads": self.threads()}]

    def threads(self) -> list[dict[str, Any]]:
        now = time.time()
        return [thread_json(v, now) for v in self.process.supervisor.statistics().threads]

    def counters(self) -> dict[str, Any]:
        return self._counters.snapshot()

    def connector_names(self) -> list[str]:
        return self.delivery.connectors.names() if self.delivery is not None else []

    def live_connectors(self) -> dict[str, dict[str, Any]]:
        if self.delivery is None:
            return {}
        destinations = self.delivery.destination_state()
        return {
            name: {
                "paused": c.paused,
                "delivered": c.delivered,
                "deferred": c.deferred,
                "bounced": c.bounced,
                "last_completed": c.last_completed,
                **destinations.get(name, {}),
            }
            for name, c in self.delivery.connectors.by_name.items()
        }

    # --- commands on delivery ------------------------------------------------------------------
    def _delivering(self, connector: str | None) -> Delivery:
        if self.delivery is None:
            raise KeyError("this process delivers nothing")
        connectors = self.delivery.connectors
        if connector is not None and connector not in connectors.by_name:
            raise KeyError(f"no connector {connector!r}; known: {connectors.names()}")
        return self.delivery

    def pause(self, connector: str | None) -> dict[str, Any]:
        names = self._delivering(connector).connectors.set_paused(connector, True)
        return {"paused": names}

    def resume(self, connector: str | None) -> dict[str, Any]:
        delivery = self._delivering(connector)
        names = delivery.connectors.set_paused(connector, False)
        delivery.wakeup.notify(*names)
        return {"resumed": names}

    def wake(self, connector: str | None, clear_down: bool, by: str | None) -> dict[str, Any]:
        """Wake a connector's idle threads (all connectors' if none is named): the queue
        changed under them (`mailgate queue retry`, `release`, ...) and work may be due.

        An administrator wants it tried now, as Postfix's `postqueue -f` clears its dead
        destination cache: unless `clear_down` is false, each connector also forgets that
        its destination was down."""
        delivery = self._delivering(connector)
        names = delivery.connectors.names() if connector is None else [connector]
        cleared = delivery.clear_down(names, by or "mailgate ctl wake") if clear_down else []
        if connector is None:
            delivery.wakeup.notify_all()
        else:
            delivery.wakeup.notify(connector)
        return {"woken": names, "down_cleared": cleared}

    def cancel(self, queue_id: str, owners: list[str]) -> dict[str, Any]:
        """See interchange/inflight.py: the attempts on `queue_id` under those leases stop."""
        found = self._delivering(None).cancel(queue_id, owners)
        return {"cancelled": [{"thread": c.thread, "owner": c.owner, "how": c.how} for c in found]}

    def refresh(self) -> dict[str, Any]:
        delivery = self._delivering(None)
        names = []
        for name in delivery.interchange_threads:
            handle = self.process.supervisor.handle(name)
            if handle is not None:
                handle.recycle = True
                names.append(name)
        delivery.wakeup.notify_all()
        return {"recycling": names}
