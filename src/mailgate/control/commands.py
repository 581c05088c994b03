"""The control commands, as plain functions over lock-free views of a running service.

Each returns JSON-ready data. None of them waits on a worker or takes a lock a
worker could hold across I/O: reading thread states, flipping pause flags, setting
stop and recycle flags, swapping level tables; `cancel` takes the in-flight
registry's and a session's locks, which workers hold only for a few assignments.
Queue counts use the control thread's own read-only connection (readers never wait
for the writer in WAL mode).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from mailgate import __version__
from mailgate.config.schema import Config
from mailgate.control.server import Command
from mailgate.model import OPEN_STATES
from mailgate.observe import catalog
from mailgate.observe.catalog import Category, Level
from mailgate.queue.reader import QueueCounts, QueueReader
from mailgate.supervise.supervisor import ThreadView

if TYPE_CHECKING:
    from mailgate.bootstrap import Service

STATES = tuple(s.value for s in OPEN_STATES)


def thread_json(view: ThreadView, now: float) -> dict[str, Any]:
    work = view.work
    return {
        "name": view.name,
        "role": view.role,
        "connector": view.connector,
        "native_id": view.native_id,
        "state": view.state,
        "alive": view.alive,
        "cpu_seconds": view.cpu_seconds,
        "started_at": view.started_at,
        "last_progress_age": round(now - view.last_progress, 3),
        "jobs_done": view.jobs_done,
        "restarts": view.restarts,
        "recycles": view.recycles,
        "generation": view.generation,
        "abandoned": view.abandoned,
        "work": None
        if work is None
        else {
            "queue_id": work.queue_id,
            "recipient": work.recipient,
            "connector": work.connector,
            "since": work.since,
            "age": round(now - work.since, 3),
        },
    }


def queue_table(
    counts: QueueCounts, connectors: list[str], live: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per connector: recipients by state (zeros included), oldest age, and the live counters
    of its interchange threads (as a worker reports them in its heartbeat)."""
    now = time.time()
    result: dict[str, dict[str, Any]] = {}
    for name in connectors:
        oldest = counts.oldest_waiting.get(name)
        entry: dict[str, Any] = {s: counts.by_state.get((name, s), 0) for s in STATES}
        state = live.get(name, {})
        entry.update(
            length=sum(entry[s] for s in STATES),
            oldest_age=round(now - oldest, 1) if oldest is not None else 0.0,
            paused=bool(state.get("paused", False)),
            delivered=int(state.get("delivered", 0)),
            deferred_attempts=int(state.get("deferred", 0)),
            bounced=int(state.get("bounced", 0)),
            last_completed_age=round(now - float(state.get("last_completed", now)), 1),
        )
        result[name] = entry
    return result


class ControlCommands:
    """Commands bound to one service; call `table()` for the name -> function map."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._reader: QueueReader | None = None
        self.started = time.time()

    def table(self) -> dict[str, Command]:
        return {
            "status": self.status,
            "threads": self.threads,
            "queues": lambda args: self.queues(),
            "health": self.health,
            "pause": lambda args: self._pause(args, True),
            "resume": lambda args: self._pause(args, False),
            "wake": self.wake,
            "cancel": self.cancel,
            "reload": self.reload,
            "refresh": self.refresh,
            "stop": self.stop,
            "dump": self.dump,
            "loglevel": self.loglevel,
        }

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        service, now = self.service, time.time()
        reasons = service.health()
        stats = service.supervisor.statistics()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": "stopping" if service.stopped.is_set() else "running",
            "uptime": round(now - self.started, 1),
            "healthy": not reasons,
            "reasons": reasons,
            "restarts": stats.restarts,
            "abandoned": stats.abandoned,
            "processes": [
                {
                    "pid": os.getpid(),
                    "role": "single",
                    "threads": [thread_json(v, now) for v in stats.threads],
                }
            ],
            "queues": self.queues(),
            "counters": service.counters.snapshot(),
            "config": service.reloads.json(),
        }

    def close(self) -> None:
        """Close the queue reader (from the thread that used it)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        reasons = self.service.health()
        return {"healthy": not reasons, "reasons": reasons}

    def threads(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        return [thread_json(v, now) for v in self.service.supervisor.statistics().threads]

    def queues(self) -> dict[str, dict[str, Any]]:
        """Per connector: recipients by state (zeros included), oldest age, live counters."""
        if self._reader is None:
            self._reader = self.service.store.reader()  # opened in the control thread
        live = {
            name: {
                "paused": c.paused,
                "delivered": c.delivered,
                "deferred": c.deferred,
                "bounced": c.bounced,
                "last_completed": c.last_completed,
            }
            for name, c in self.service.connectors.by_name.items()
        }
        return queue_table(self._reader.counts(), list(live), live)

    def _pause(self, args: dict[str, Any], paused: bool) -> dict[str, Any]:
        name = args.get("connector")
        connectors = self.service.connectors
        if name is not None and name not in connectors.by_name:
            raise KeyError(f"no connector {name!r}; known: {connectors.names()}")
        names = connectors.set_paused(name, paused)
        if not paused:
            self.service.wakeup.notify(*names)
        return {"paused" if paused else "resumed": names}

    def wake(self, args: dict[str, Any]) -> dict[str, Any]:
        """Wake a connector's idle threads (all connectors' if none is named): the queue
        changed under them (`mailgate queue retry`, `release`, ...) and work may be due.

        An administrator wants it tried now, as Postfix's `postqueue -f` clears its dead
        destination cache: unless `clear_down` is false, each connector also forgets that
        its destination was down (`by` names who asked, for event 2462)."""
        name = args.get("connector")
        connectors = self.service.connectors
        if name is not None and name not in connectors.by_name:
            raise KeyError(f"no connector {name!r}; known: {connectors.names()}")
        names = connectors.names() if name is None else [name]
        cleared: list[str] = []
        if args.get("clear_down", True):
            cleared = self.service.clear_down(names, str(args.get("by") or "mailgate ctl wake"))
        if name is None:
            self.service.wakeup.notify_all()
        else:
            self.service.wakeup.notify(name)
        return {"woken": names, "down_cleared": cleared}

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop the attempts on one message whose leases an administrator's command revoked
        (`queue_id`, and the lease `owners` it took them from); see interchange/inflight.py."""
        queue_id, owners = args.get("queue_id"), args.get("owners")
        if not isinstance(queue_id, str) or not isinstance(owners, list):
            raise ValueError("give queue_id (a string) and owners (a list of lease owners)")
        found = self.service.in_flight.cancel(queue_id, [str(o) for o in owners[:1000]])
        for item in found:
            self.service.events.emit(
                catalog.ATTEMPT_CANCELLED, thread=item.thread, queue_id=queue_id, how=item.how
            )
        return {"cancelled": [{"thread": c.thread, "owner": c.owner, "how": c.how} for c in found]}

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """Reload from the file, or (from a master) apply the configuration it validated."""
        given = args.get("config")
        new = Config.model_validate_json(given) if isinstance(given, str) else None
        return {"reloaded": self.service.reload(new)}

    def refresh(self, args: dict[str, Any]) -> dict[str, Any]:
        """Recycle every interchange thread now (each finishes its batch first)."""
        names = []
        for name in self.service.interchange_threads:
            handle = self.service.supervisor.handle(name)
            if handle is not None:
                handle.recycle = True
                names.append(name)
        self.service.wakeup.notify_all()
        return {"recycling": names}

    def stop(self, args: dict[str, Any]) -> dict[str, Any]:
        self.service.request_stop()
        return {"stopping": True}

    def dump(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.dump_current()

    @staticmethod
    def dump_current() -> list[dict[str, Any]]:
        """Every thread's current stack, like a thread dump of a JVM."""
        names = {t.ident: t.name for t in threading.enumerate()}
        frames = sys._current_frames().items()
        return [
            {"thread": names.get(i, str(i)), "stack": "".join(traceback.format_stack(frame))}
            for i, frame in frames
        ]

    def loglevel(self, args: dict[str, Any]) -> dict[str, str]:
        events = self.service.events
        category, level = args.get("category"), args.get("level")
        if category is not None:
            if level is None:
                raise ValueError("give a level: none, minimum, medium or maximum")
            events.set_level(Category(category), Level[str(level).upper()])
        return {c.value: events.level(c).name.lower() for c in Category}
