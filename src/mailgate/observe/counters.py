"""Counters of one process: plain numbers, cheap to bump, easy to ship to the master.

Named counters (monotonic) and gauges (current values) plus one latency histogram
per connector, named by the metrics catalog (metrics.py). Increments take a lock
held for a few instructions; readers get a snapshot dict that is JSON-ready, so a
worker can include it in its heartbeat and the master (or the single process) can
turn it into Prometheus metrics at scrape time. No Prometheus types live here:
workers need none.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from mailgate.observe.metrics import LATENCY_BUCKETS, MetricType

Name = MetricType | str  # a catalog entry; a bare name for one the catalog does not know


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = {}
        self._gauges: dict[str, float] = {}
        self._histograms: dict[str, list[float]] = {}  # per key: bucket counts, sum, count

    def add(self, name: Name, amount: float = 1.0, **labels: str) -> None:
        key = _key(name, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def gauge(self, name: Name, amount: float, **labels: str) -> None:
        """Move a gauge by `amount` (negative to lower it)."""
        key = _key(name, labels)
        with self._lock:
            self._gauges[key] = self._gauges.get(key, 0.0) + amount

    def observe(self, name: Name, value: float, **labels: str) -> None:
        key = _key(name, labels)
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:  # one slot per bound, one for +Inf, then sum and count
                hist = self._histograms[key] = [0.0] * (len(LATENCY_BUCKETS) + 3)
            hist[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
            hist[-2] += value
            hist[-1] += 1

    def snapshot(self) -> dict[str, Any]:
        """Counters, gauges and histograms (per key: [bucket counts.., +Inf, sum, count])."""
        with self._lock:
            return {
                "counters": dict(self._counts),
                "gauges": dict(self._gauges),
                "histograms": {k: list(v) for k, v in self._histograms.items()},
            }


def _key(metric: Name, labels: dict[str, str]) -> str:
    """`name{a="x",b="y"}` with labels sorted: a stable, readable key."""
    name = metric if isinstance(metric, str) else metric.name
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the snapshots of several processes (counters, gauges and histograms)."""
    merged: dict[str, Any] = {"counters": {}, "gauges": {}, "histograms": {}}
    for snap in snapshots:
        for kind in ("counters", "gauges"):
            for key, value in snap.get(kind, {}).items():
                merged[kind][key] = merged[kind].get(key, 0.0) + value
        for key, values in snap.get("histograms", {}).items():
            current = merged["histograms"].get(key)
            merged["histograms"][key] = (
                list(values)
                if current is None
                else [a + b for a, b in zip(current, values, strict=True)]
            )
    return merged
