"""The control surface: what a running service says about itself, and the commands it takes.

One interface, `ControlSurface`, with one implementation for one process (local.py)
and one for the master over its workers (master/surface.py). The control socket
(server.py), a worker's command channel, the admin HTTP listener (web/admin.py) and
so `mailgate top` read it directly; status, health and log levels are written once,
here. Every answer is JSON-ready and comes from lock-free views (thread states,
flags, level tables) or from the surface's own read-only queue connection, which
never waits for the writer: build a surface in the thread that uses it, and close it
there. A command a surface cannot take raises; the caller answers the error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from mailgate import __version__
from mailgate.config.schema import Config
from mailgate.errors import StoreError
from mailgate.model import RecipientState
from mailgate.observe.catalog import Category, Level
from mailgate.observe.events import EventLog
from mailgate.queue.reader import QueueCounts, QueueReader
from mailgate.supervise.supervisor import Supervisor
from mailgate.supervise.views import ThreadView

Command = Callable[[dict[str, Any]], Any]
# The states of a recipient still waiting, as `status` counts them per connector.
STATES = tuple(s.value for s in RecipientState if s not in (RecipientState.DELIVERED,
                                                            RecipientState.BOUNCED))  # fmt: skip


class Process(Protocol):
    """What a surface reads of the process it answers for (service/host.py's Host)."""

    supervisor: Supervisor
    events: EventLog
    started_at: float
    config: Config

    @property
    def stopping(self) -> bool: ...

    def health(self) -> list[str]: ...

    def request_stop(self, reason: str) -> None: ...

    def reload(self, new: Config | None = None) -> dict[str, Any]: ...

    def reload_state(self) -> dict[str, Any]: ...


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
            threads=int(state.get("threads", 0)),
            connections=int(state.get("connections", 0)),
            idle_connections=int(state.get("idle_connections", 0)),
            waiting_threads=int(state.get("waiting_threads", 0)),
            down=str(state.get("down", "")),
        )
        result[name] = entry
    return result


def current_stacks() -> list[dict[str, Any]]:
    """Every thread's current stack in this process, like a thread dump of a JVM."""
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sys._current_frames().items()
    return [
        {"thread": names.get(i, str(i)), "stack": "".join(traceback.format_stack(frame))}
        for i, frame in frames
    ]


class ControlSurface(ABC):
    """The answers and commands of a running service (see the module docstring)."""

    def __init__(self, process: Process, open_reader: Callable[[], QueueReader]) -> None:
        self.process = process
        self._open_reader = open_reader
        self._reader: QueueReader | None = None

    # --- what it is doing --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State, health, every process and thread, queues, counters: `ctl status --json`."""
        process, now = self.process, time.time()
        reasons = process.health()
        processes = self.processes()
        threads = [t for p in processes for t in p["threads"]]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": "stopping" if process.stopping else "running",
            "uptime": round(now - process.started_at, 1),
            "healthy": not reasons,
            "reasons": reasons,
            "restarts": sum(t.get("restarts", 0) for t in threads)
            + sum(p.get("restarts", 0) for p in processes),
            "abandoned": sum(t.get("abandoned", 0) for t in threads),
            "processes": processes,
            "queues": self.queues(),
            "nodes": self.nodes(),
            "counters": self.counters(),
            "config": process.reload_state(),
        }

    def health(self) -> dict[str, Any]:
        reasons = self.process.health()
        return {"healthy": not reasons, "reasons": reasons}

    def queues(self) -> dict[str, dict[str, Any]]:
        """Per connector: recipients by state (zeros included), oldest age, live counters."""
        return queue_table(self.reader().counts(), self.connector_names(), self.live_connectors())

    def reader(self) -> QueueReader:
        """The surface's read-only queue reader (the dashboard reads the queue with it)."""
        if self._reader is None:
            self._reader = self._open_reader()  # in the thread that uses it
        return self._reader

    def nodes(self) -> list[dict[str, Any]]:
        """Every node sharing the queue: name, state, last heart-beat, its threads' work
        (an empty list if the store cannot say: status answers even then)."""
        if self._reader is None:
            self._reader = self._open_reader()
        try:
            now, rows = self._reader.nodes(self.process.config.queue.node_timeout)
        except StoreError:
            return []
        return [row.json(now) for row in rows]

    @abstractmethod
    def processes(self) -> list[dict[str, Any]]:
        """Each process with its threads (as thread_json)."""

    @abstractmethod
    def threads(self) -> list[dict[str, Any]]:
        """Every supervised thread."""

    @abstractmethod
    def counters(self) -> dict[str, Any]:
        """The stages' counters (observe/counters.py snapshot), of every process."""

    @abstractmethod
    def connector_names(self) -> list[str]: ...

    @abstractmethod
    def live_connectors(self) -> dict[str, dict[str, Any]]:
        """Per connector: paused, delivered, deferred, bounced, last_completed."""

    # --- commands ----------------------------------------------------------------------------
    @abstractmethod
    def pause(self, connector: str | None) -> Any: ...

    @abstractmethod
    def resume(self, connector: str | None) -> Any: ...

    @abstractmethod
    def wake(self, connector: str | None, clear_down: bool, by: str | None) -> Any:
        """Try what is due now; unless `clear_down` is false, forget that a destination
        was down (`by` names who asked, for event 2462)."""

    @abstractmethod
    def cancel(self, queue_id: str, owners: list[str]) -> Any:
        """Stop the attempts on one message whose leases a command revoked."""

    @abstractmethod
    def refresh(self) -> Any:
        """Recycle every interchange thread now (each finishes its batch first)."""

    def reload(self, new: Config | None = None) -> dict[str, Any]:
        """Reload from the file, or (a worker, from its master) take the one it validated."""
        return self.process.reload(new)

    def stop(self) -> dict[str, Any]:
        self.process.request_stop("mailgate ctl stop")
        return {"stopping": True}

    def dump(self) -> list[dict[str, Any]]:
        return current_stacks() + self.other_stacks()

    def other_stacks(self) -> list[dict[str, Any]]:
        """Stacks of other processes' threads (the master's workers)."""
        return []

    def loglevel(self, category: str | None, level: str | None) -> dict[str, str]:
        """The level of every category; with both given, set one first, live."""
        events = self.process.events
        if category is not None:
            if level is None:
                raise ValueError("give a level: none, minimum, medium or maximum")
            events.set_level(Category(category), Level[str(level).upper()])
            self.spread_loglevel(category, level)
        return {c.value: events.level(c).name.lower() for c in Category}

    def spread_loglevel(self, category: str, level: str) -> None:  # noqa: B027 - optional
        """Set the level in other processes too (the master's workers)."""

    def close(self) -> None:
        """Close the queue reader (from the thread that used it)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def command_table(surface: ControlSurface) -> dict[str, Command]:
    """The commands of the control socket and a worker's channel: name -> function of the
    request's JSON arguments."""

    def cancel(args: dict[str, Any]) -> Any:
        queue_id, owners = args.get("queue_id"), args.get("owners")
        if not isinstance(queue_id, str) or not isinstance(owners, list):
            raise ValueError("give queue_id (a string) and owners (a list of lease owners)")
        return surface.cancel(queue_id, [str(o) for o in owners[:1000]])

    def reload(args: dict[str, Any]) -> Any:
        given = args.get("config")
        return surface.reload(Config.model_validate_json(given) if isinstance(given, str) else None)

    return {
        "status": lambda args: surface.status(),
        "threads": lambda args: surface.threads(),
        "queues": lambda args: surface.queues(),
        "health": lambda args: surface.health(),
        "pause": lambda args: surface.pause(args.get("connector")),
        "resume": lambda args: surface.resume(args.get("connector")),
        "wake": lambda args: surface.wake(
            args.get("connector"), bool(args.get("clear_down", True)), args.get("by")
        ),
        "cancel": cancel,
        "reload": reload,
        "refresh": lambda args: surface.refresh(),
        "stop": lambda args: surface.stop(),
        "dump": lambda args: surface.dump(),
        "loglevel": lambda args: surface.loglevel(args.get("category"), args.get("level")),
    }
