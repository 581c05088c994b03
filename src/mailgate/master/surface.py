"""The control surface of the master: the whole service, over its worker processes.

Status merges the master's own threads with the last heartbeat of every worker,
whose threads' CPU seconds the master re-reads from /proc/<pid>/task/<tid>/stat,
and adds up the workers' counters. Commands for workers (pause, resume, refresh,
wake, cancel, loglevel, dump) go over each worker's channel with a one-second
answer deadline, so control still answers when a worker does not; the answer is
each worker's, by name.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from mailgate.control.surface import ControlSurface, Process, thread_json
from mailgate.master.processes import WorkerProcess
from mailgate.observe.counters import merge
from mailgate.queue.reader import QueueReader
from mailgate.supervise.cpu import thread_cpu_seconds

if TYPE_CHECKING:
    from mailgate.master.master import Master

ANSWER = 1.0


class MasterSurface(ControlSurface):
    def __init__(self, process: Process, master: Master) -> None:
        super().__init__(process, lambda: QueueReader(master.backend.connect()))
        self.master = master
        self._seen: dict[str, tuple[Any, dict[str, Any]]] = {}  # worker -> (pid, counters)
        self._retired: dict[str, Any] = merge([])  # what replaced workers had counted

    def processes(self) -> list[dict[str, Any]]:
        now = time.time()
        own = [thread_json(v, now) for v in self.process.supervisor.statistics().threads]
        result: list[dict[str, Any]] = [
            {"pid": os.getpid(), "role": "master", "name": "master", "alive": True,
             "threads": own},
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

    def threads(self) -> list[dict[str, Any]]:
        return [
            {**t, "process": p["name"], "pid": p["pid"]}
            for p in self.processes()
            for t in p["threads"]
        ]

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

    def connector_names(self) -> list[str]:
        return self.master.config.connectors

    def live_connectors(self) -> dict[str, dict[str, Any]]:
        live: dict[str, dict[str, Any]] = {}
        for worker in self.master.workers:
            live.update(worker.status.get("connectors", {}))
        return live

    # --- commands, relayed -------------------------------------------------------------------
    def _workers(self, role: str | None = None) -> list[WorkerProcess]:
        return [w for w in self.master.workers if w.alive and (role is None or w.spec.role == role)]

    def _relay(self, command: str, args: dict[str, Any], role: str | None) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        args = {k: v for k, v in args.items() if v is not None}
        for worker in self._workers(role):
            try:
                answers[worker.name] = worker.call(command, args, ANSWER)
            except (TimeoutError, RuntimeError) as exc:
                answers[worker.name] = {"error": str(exc) or "no answer within 1 s"}
        return answers

    def pause(self, connector: str | None) -> dict[str, Any]:
        return self._relay("pause", {"connector": connector}, "interchange")

    def resume(self, connector: str | None) -> dict[str, Any]:
        return self._relay("resume", {"connector": connector}, "interchange")

    def wake(self, connector: str | None, clear_down: bool, by: str | None) -> dict[str, Any]:
        args = {"connector": connector, "clear_down": clear_down, "by": by}
        return self._relay("wake", args, "interchange")

    def cancel(self, queue_id: str, owners: list[str]) -> dict[str, Any]:
        return self._relay("cancel", {"queue_id": queue_id, "owners": owners}, "interchange")

    def refresh(self) -> dict[str, Any]:
        return self._relay("refresh", {}, "interchange")

    def spread_loglevel(self, category: str, level: str) -> None:
        self._relay("loglevel", {"category": category, "level": level}, None)

    def other_stacks(self) -> list[dict[str, Any]]:
        stacks: list[dict[str, Any]] = []
        for name, answer in self._relay("dump", {}, None).items():
            if isinstance(answer, list):
                stacks += [{**item, "thread": f"{name}/{item['thread']}"} for item in answer]
        return stacks


def _monotonic(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's counters and histograms, without its gauges."""
    return {"counters": snapshot.get("counters", {}), "histograms": snapshot.get("histograms", {})}
