"""Control commands of the master: the whole service's view, and commands relayed to workers.

Status merges the master's own threads with the last heartbeat of every worker, whose
threads' CPU seconds the master re-reads from /proc/<pid>/task/<tid>/stat. Commands
for workers (pause, resume, refresh, wake, cancel, loglevel, dump) go over each worker's channel
with a one-second answer deadline, so control still answers when a worker does not.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from mailgate import __version__
from mailgate.control.commands import ControlCommands, queue_table, thread_json
from mailgate.control.server import Command
from mailgate.observe.catalog import Category, Level
from mailgate.observe.counters import merge
from mailgate.queue.reader import QueueReader
from mailgate.supervise.cpu import thread_cpu_seconds

if TYPE_CHECKING:
    from mailgate.master.master import Master
    from mailgate.master.processes import WorkerProcess

ANSWER = 1.0


class MasterCommands:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.started = time.time()
        self._reader: QueueReader | None = None
        self._seen: dict[str, tuple[Any, dict[str, Any]]] = {}  # worker -> (pid, counters)
        self._retired: dict[str, Any] = merge([])  # what replaced workers had counted

    def table(self) -> dict[str, Command]:
        return {
            "status": self.status,
            "threads": self.threads,
            "queues": lambda args: self.queues(),
            "health": self.health,
            "pause": lambda args: self._relay("pause", args, "interchange"),
            "resume": lambda args: self._relay("resume", args, "interchange"),
            "refresh": lambda args: self._relay("refresh", args, "interchange"),
            "wake": lambda args: self._relay("wake", args, "interchange"),
            "cancel": lambda args: self._relay("cancel", args, "interchange"),
            "reload": self.reload,
            "stop": self.stop,
            "dump": self.dump,
            "loglevel": self.loglevel,
        }

    def processes(self) -> list[dict[str, Any]]:
        now = time.time()
        master_threads = [thread_json(v, now) for v in self.master.supervisor.statistics().threads]
        result: list[dict[str, Any]] = [
            {"pid": os.getpid(), "role": "master", "name": "master", "alive": True,
             "threads": master_threads},
        ]  # fmt: skip
        for worker in self.master.workers:
            threads = [dict(t) for t in worker.status.get("threads", [])]
            for thread in threads:  # fresh CPU time, read by the master itself
                cpu = thread_cpu_seconds(thread.get("native_id"), worker.pid)
                if cpu is not None:
                    thread["cpu_seconds"] = cpu
            result.append(
                {
                    "pid": worker.pid,
                    "role": worker.spec.role,
                    "name": worker.name,
                    "alive": worker.alive,
                    "restarts": worker.restarts,
                    "failed": worker.failed,
                    "heard_age": round(now - worker.last_heard, 2),
                    "threads": threads,
                }
            )
        return result

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        reasons = self.master.health()
        processes = self.processes()
        threads = [t for p in processes for t in p["threads"]]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": "stopping" if self.master.stopping else "running",
            "uptime": round(time.time() - self.started, 1),
            "healthy": not reasons,
            "reasons": reasons,
            "restarts": sum(t.get("restarts", 0) for t in threads)
            + sum(w.restarts for w in self.master.workers),
            "abandoned": sum(t.get("abandoned", 0) for t in threads),
            "processes": processes,
            "queues": self.queues(),
            "counters": self.counters(),
            "config": self.master.reloads.json(),
        }

    def counters(self) -> dict[str, Any]:
        """The workers' counters (from their last heartbeats), merged.

        Totals never go back when a worker is replaced: the last counts seen from the
        one that ended are kept (its gauges are not: they died with it)."""
        snapshots = [self._retired]
        for worker in self.master.workers:
            current = worker.status.get("counters")
            pid = worker.status.get("pid")
            seen = self._seen.get(worker.name)
            if current is None:  # restarting: keep what it had counted
                if seen is not None:
                    snapshots.append(_monotonic(seen[1]))
                continue
            if seen is not None and seen[0] != pid:
                self._retired = merge([self._retired, _monotonic(seen[1])])
                snapshots[0] = self._retired
            self._seen[worker.name] = (pid, current)
            snapshots.append(current)
        return merge(snapshots)

    def close(self) -> None:
        """Close the queue reader (from the thread that used it)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        reasons = self.master.health()
        return {"healthy": not reasons, "reasons": reasons}

    def threads(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {**t, "process": p["name"], "pid": p["pid"]}
            for p in self.processes()
            for t in p["threads"]
        ]

    def queues(self) -> dict[str, dict[str, Any]]:
        if self._reader is None:
            backend = self.master.backend
            self._reader = QueueReader(backend.connect())
        live: dict[str, dict[str, Any]] = {}
        for worker in self.master.workers:
            live.update(worker.status.get("connectors", {}))
        return queue_table(self._reader.counts(), self.master.config.connectors, live)

    def _workers(self, role: str | None = None) -> list[WorkerProcess]:
        return [w for w in self.master.workers if w.alive and (role is None or w.spec.role == role)]

    def _relay(self, command: str, args: dict[str, Any], role: str | None) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        for worker in self._workers(role):
            try:
                answers[worker.name] = worker.call(command, args, ANSWER)
            except (TimeoutError, RuntimeError) as exc:
                answers[worker.name] = {"error": str(exc) or "no answer within 1 s"}
        return answers

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.master.reload()

    def stop(self, args: dict[str, Any]) -> dict[str, Any]:
        self.master.stop_reason = self.master.stop_reason or "mailgate ctl stop"
        self.master.requested_stop = True
        return {"stopping": True}

    def dump(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        stacks = ControlCommands.dump_current()
        for name, answer in self._relay("dump", {}, None).items():
            if isinstance(answer, list):
                stacks += [{**item, "thread": f"{name}/{item['thread']}"} for item in answer]
        return stacks

    def loglevel(self, args: dict[str, Any]) -> dict[str, Any]:
        events = self.master.events
        category, level = args.get("category"), args.get("level")
        if category is not None:
            if level is None:
                raise ValueError("give a level: none, minimum, medium or maximum")
            events.set_level(Category(category), Level[str(level).upper()])
            self._relay("loglevel", args, None)
        return {c.value: events.level(c).name.lower() for c in Category}


def _monotonic(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's counters and histograms, without its gauges."""
    return {"counters": snapshot.get("counters", {}), "histograms": snapshot.get("histograms", {})}
