"""The dashboard's memory: the last hour of samples, in a ring buffer of the master's.

Every SAMPLE_EVERY seconds the admin thread records what a status answer says: the
total queue length and each connector's, the counters of received, delivered,
deferred and bounced mail, whether a thread or a connector is stalled, and every
thread's CPU seconds. Rates and % CPU are differences between neighbouring samples,
so nothing is kept but SIZE samples (an hour): memory is bounded whatever the
traffic. A sample is marked stalled when it saw a stalled thread or connector, or when
stall events (stalls.py) were written since the one before. A service restart starts a
new ring (it is memory only); a sample whose pid differs from the last one's starts a
new ring too, since counters restarted at zero. Other nodes' threads' CPU seconds come
from the summary each node writes with its heart-beat (the status answer's `nodes`):
they are kept per node at that heart-beat's time (the store's clock), one entry per new
heart-beat, so their % CPU is a difference between two of that node's heart-beats.
Pure data: it never fails but on a malformed status answer, which it skips.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mailgate.observe import metrics
from mailgate.web.metrics import parse_key

SAMPLE_EVERY = 2.0
SIZE = 1800  # one hour
SPARK = 30  # samples per CPU sparkline (one minute)
RATES = {
    "received": metrics.MESSAGES_RECEIVED.name,
    "delivered": metrics.DELIVERED.name,
    "deferred": metrics.DEFERRED.name,
    "bounced": metrics.BOUNCED.name,
}
STALL_STATES = ("stalled", "abandoned", "failed")


@dataclass(frozen=True, slots=True)
class Sample:
    when: float
    pid: Any
    queued: int
    by_connector: dict[str, int]
    totals: dict[str, float]
    stalled: bool  # a thread or connector stalled now, or a stall event since the last sample
    cpu: dict[str, float] = field(default_factory=dict)  # "process/thread" -> CPU seconds;
    # emptied once in the ring (SampleRing keeps the last SPARK + 1 apart)
    stall_events: int = 0  # stall events counted so far (stalls.py)


def total(status: dict[str, Any], name: str) -> float:
    """The sum of counter `name` over all its series (as `mailgate top` adds them)."""
    counters = (status.get("counters") or {}).get("counters") or {}
    return sum(float(v) for k, v in counters.items() if parse_key(k)[0] == name)


def process_name(process: dict[str, Any]) -> str:
    """A process's name: a worker's, or its role (a single process has no name)."""
    return str(process.get("name") or process.get("role") or "single")


def thread_key(process: dict[str, Any], thread: dict[str, Any]) -> str:
    return f"{process_name(process)}/{thread.get('name')}"


def sample_of(status: dict[str, Any], when: float, stall_events: int = 0) -> Sample:
    queues = status.get("queues") or {}
    by_connector = {name: int(q.get("length", 0)) for name, q in queues.items()}
    cpu: dict[str, float] = {}
    stalled = any("stall" in str(r) for r in status.get("reasons") or [])
    for process in status.get("processes") or []:
        for thread in process.get("threads") or []:
            stalled = stalled or thread.get("state") in STALL_STATES
            if thread.get("cpu_seconds") is not None:
                cpu[thread_key(process, thread)] = float(thread["cpu_seconds"])
    return Sample(
        when=when,
        pid=status.get("pid"),
        queued=sum(by_connector.values()),
        by_connector=by_connector,
        totals={label: total(status, name) for label, name in RATES.items()},
        stalled=stalled,
        cpu=cpu,
        stall_events=stall_events,
    )


class SampleRing:
    """The last SIZE samples, oldest first."""

    def __init__(self, size: int = SIZE) -> None:
        self._ring: deque[Sample] = deque(maxlen=size)
        # CPU seconds per thread for the sparklines only: the last SPARK + 1 samples keep
        # them, not the hour (a few dozen threads times 1,800 samples would be megabytes).
        self._cpu: deque[tuple[float, dict[str, float]]] = deque(maxlen=SPARK + 1)
        # Per node: (heart-beat time, "process/thread" -> CPU seconds), from its summary.
        self._nodes: dict[str, deque[tuple[float, dict[str, float]]]] = {}

    def add(self, status: dict[str, Any], when: float, stall_events: int = 0) -> None:
        try:
            sample = sample_of(status, when, stall_events)
        except (TypeError, ValueError, AttributeError):
            return
        if self._ring and self._ring[-1].pid != sample.pid:
            self._ring.clear()  # another service: its counters started from zero
            self._cpu.clear()
        if self._ring and stall_events > self._ring[-1].stall_events and not sample.stalled:
            sample = replace(sample, stalled=True)  # a stall came and went between samples
        self._cpu.append((when, sample.cpu))
        self._ring.append(replace(sample, cpu={}))
        self._add_nodes(status.get("nodes"))

    def _add_nodes(self, nodes: Any) -> None:
        """Each node's threads' CPU seconds at its last heart-beat, if that one is new."""
        seen: set[str] = set()
        for node in nodes if isinstance(nodes, list) else []:
            try:
                name, beat = str(node["name"]), float(node["last_heartbeat"])
                threads = [t for t in node.get("work") or [] if t.get("cpu_seconds") is not None]
                cpu = {f"{t.get('process')}/{t.get('thread')}": float(t["cpu_seconds"])
                       for t in threads}  # fmt: skip
            except (TypeError, ValueError, KeyError, AttributeError):
                continue  # a damaged summary: that node has no sparkline
            seen.add(name)
            ring = self._nodes.setdefault(name, deque(maxlen=SPARK + 1))
            if not ring or beat > ring[-1][0]:
                ring.append((beat, cpu))
        for gone in set(self._nodes) - seen:
            del self._nodes[gone]  # bounded by the nodes there are

    def samples(self) -> list[Sample]:
        return list(self._ring)

    @property
    def last_when(self) -> float:
        return self._ring[-1].when if self._ring else 0.0

    def rates(self) -> dict[str, float | None]:
        """Per second between the last two samples (None before there are two)."""
        if len(self._ring) < 2:
            return dict.fromkeys(RATES)
        a, b = self._ring[-2], self._ring[-1]
        span = b.when - a.when
        return {k: max(0.0, b.totals[k] - a.totals[k]) / span if span > 0 else None for k in RATES}

    def delivery_rates(self) -> list[tuple[float, float]]:
        """(time, delivered per second) between each pair of neighbouring samples."""
        ring = list(self._ring)
        return [
            (b.when, max(0.0, b.totals["delivered"] - a.totals["delivered"]) / (b.when - a.when))
            for a, b in itertools.pairwise(ring)
            if b.when > a.when
        ]

    def cpu_percent(self, key: str) -> list[float]:
        """% CPU of one thread over the last SPARK samples."""
        return _percent(self._cpu, key)

    def node_cpu_percent(self, node: str, key: str) -> list[float]:
        """% CPU of one thread ("process/thread") of another node, between its heart-beats."""
        return _percent(self._nodes.get(node, ()), key)


def _percent(points: Iterable[tuple[float, dict[str, float]]], key: str) -> list[float]:
    """% CPU of `key` between each pair of neighbouring (time, CPU seconds) entries."""
    result: list[float] = []
    for (t0, a), (t1, b) in itertools.pairwise(points):
        if key in a and key in b and t1 > t0:
            result.append(max(0.0, b[key] - a[key]) / (t1 - t0) * 100)
    return result
