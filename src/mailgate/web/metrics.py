"""Prometheus metrics of the whole service, built at scrape time from one status answer.

The status (the JSON of `mailgate ctl status`, with its merged counters) holds all
there is: queues, every process's threads, restarts, health and the counters the
stages bump (observe/counters.py). `StatusCollector` turns it into one family per
entry of the metrics catalog (observe/metrics.py) on each scrape; nothing is
registered globally and nothing is kept between scrapes. Known series are always
reported, with zeros, so a dashboard or an alert never sees a series appear or
vanish with the traffic. A counter a stage bumps that the catalog does not know is
exposed as it is.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mailgate.control.surface import STATES
from mailgate.observe import metrics as m
from mailgate.observe.metrics import LATENCY_BUCKETS, OUTCOMES, SOURCES, Kind, MetricType

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Status = dict[str, Any]
Family = CounterMetricFamily | GaugeMetricFamily


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """`name{a="x",b="y"}` (a Counters key) -> ("name", {"a": "x", "b": "y"})."""
    name, brace, rest = key.partition("{")
    return name, dict(_LABEL.findall(rest)) if brace else {}


class _Counts:
    """The counters snapshot, indexed by name, remembering which names were used."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.used: set[str] = set()
        self.by_name: dict[str, dict[str, list[tuple[dict[str, str], Any]]]] = {}
        for kind in ("counters", "gauges", "histograms"):
            for key, value in (snapshot.get(kind) or {}).items():
                name, labels = parse_key(key)
                self.by_name.setdefault(kind, {}).setdefault(name, []).append((labels, value))

    def series(self, kind: str, name: str) -> list[tuple[dict[str, str], Any]]:
        self.used.add(name)
        return self.by_name.get(kind, {}).get(name, [])

    def total(self, kind: str, name: str, **match: str) -> float:
        return sum(
            float(value)
            for labels, value in self.series(kind, name)
            if all(labels.get(k) == v for k, v in match.items())
        )

    def values(self, kind: str, name: str, label: str) -> set[str]:
        """The values `label` takes in the series of `name`."""
        return {labels[label] for labels, _ in self.series(kind, name) if label in labels}

    def unused(self, kind: str) -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
        for name, series in sorted(self.by_name.get(kind, {}).items()):
            if name not in self.used:
                yield name, series


class _Scrape:
    """One status answer, read for the builders below."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.counts = _Counts(status.get("counters") or {})
        self.queues: dict[str, dict[str, Any]] = status.get("queues") or {}
        self.connectors = list(self.queues)

    def threads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(process name, thread) of every thread of every process."""
        for process in self.status.get("processes") or []:
            pname = str(process.get("name") or process.get("role") or process.get("pid"))
            for thread in process.get("threads") or []:
                yield pname, thread


def family(metric: MetricType, value: float | None = None) -> Family:
    """An empty family of `metric` (or, without labels, one with `value`)."""
    labels = list(metric.labels) if value is None else None
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.family, metric.help, value=value, labels=labels)
    assert metric.kind is Kind.GAUGE, metric
    return GaugeMetricFamily(metric.family, metric.help, value=value, labels=labels)


def build_metrics(status: Status) -> list[Metric]:
    """Every metric family of the service, from a status answer: the catalog's, in its
    order, then the counters a stage bumped that the catalog does not know."""
    scrape = _Scrape(status)
    built = [BUILDERS.get(metric, _stage)(metric, scrape) for metric in m.METRICS.values()]
    return [*built, *_others(scrape.counts)]


# --- status metrics: read from the answer ----------------------------------------------------
def _value(read: Callable[[Status], float]) -> Callable[[MetricType, _Scrape], Metric]:
    return lambda metric, scrape: family(metric, read(scrape.status))


def _info(metric: MetricType, scrape: _Scrape) -> Metric:
    info = family(metric)
    info.add_metric([str(scrape.status.get("version", ""))], 1)
    return info


def _config(status: Status) -> dict[str, Any]:
    return status.get("config") or {}


def _stalled(metric: MetricType, scrape: _Scrape) -> Metric:
    return family(metric, sum(1 for _, t in scrape.threads() if t.get("state") == "stalled"))


def _per_queue(read: Callable[[dict[str, Any]], float]) -> Callable[[MetricType, _Scrape], Metric]:
    def build(metric: MetricType, scrape: _Scrape) -> Metric:
        result = family(metric)
        for name, entry in scrape.queues.items():
            result.add_metric([name], read(entry))
        return result

    return build


def _by_state(metric: MetricType, scrape: _Scrape) -> Metric:
    result = family(metric)
    for name, entry in scrape.queues.items():
        for state in STATES:
            result.add_metric([name, state], float(entry.get(state, 0)))
    return result


def _outcome(outcome: str) -> Callable[[MetricType, _Scrape], Metric]:
    """Recipients by connector with one outcome of mailgate_attempts_total."""

    def build(metric: MetricType, scrape: _Scrape) -> Metric:
        result = family(metric)
        for connector in _connectors(scrape, m.ATTEMPTS):
            value = scrape.counts.total(
                "counters", m.ATTEMPTS.name, connector=connector, outcome=outcome
            )
            result.add_metric([connector], value)
        return result

    return build


def _thread_cpu(metric: MetricType, scrape: _Scrape) -> Metric:
    result = family(metric)
    for pname, thread in scrape.threads():
        if thread.get("cpu_seconds") is not None:
            result.add_metric([pname, str(thread.get("name"))], float(thread["cpu_seconds"]))
    return result


def _thread_state(metric: MetricType, scrape: _Scrape) -> Metric:
    result = family(metric)
    for pname, thread in scrape.threads():
        result.add_metric([pname, str(thread.get("name")), str(thread.get("state"))], 1)
    return result


# --- stage metrics: the counters the stages bump, zeros included --------------------------------
def _connectors(scrape: _Scrape, metric: MetricType) -> list[str]:
    kind = "histograms" if metric.kind is Kind.HISTOGRAM else "counters"
    seen = scrape.counts.values(kind, metric.name, "connector")
    return sorted(set(scrape.connectors) | seen)


def _domain(metric: MetricType, label: str, scrape: _Scrape) -> tuple[str, ...] | None:
    """The values of `label` always exposed, with zeros; None if only those seen are."""
    if label == "connector":
        return tuple(scrape.connectors)
    if label == "source":
        return SOURCES
    if label == "outcome" and metric is m.ATTEMPTS:
        return OUTCOMES
    return None


def _stage(metric: MetricType, scrape: _Scrape) -> Metric:
    kind = "gauges" if metric.kind is Kind.GAUGE else "counters"
    counts = scrape.counts
    if not metric.labels:
        return family(metric, counts.total(kind, metric.name))
    result = family(metric)
    seen = [
        tuple(labels.get(k, "") for k in metric.labels)
        for labels, _ in counts.series(kind, metric.name)
    ]
    domains = [_domain(metric, label, scrape) for label in metric.labels]
    if all(d is not None for d in domains):
        values = [sorted(set(d or ()) | {key[n] for key in seen}) for n, d in enumerate(domains)]
        keys: Iterable[tuple[str, ...]] = itertools.product(*values)
    else:
        keys = sorted(set(seen))
    for key in keys:
        value = counts.total(kind, metric.name, **dict(zip(metric.labels, key, strict=True)))
        result.add_metric(list(key), value)
    return result


def _latency(metric: MetricType, scrape: _Scrape) -> Metric:
    result = HistogramMetricFamily(metric.family, metric.help, labels=list(metric.labels))
    found = {
        labels.get("connector", ""): v
        for labels, v in scrape.counts.series("histograms", metric.name)
    }
    for connector in sorted(set(scrape.connectors) | set(found) - {""}):
        bounds, total = _histogram(found.get(connector) or [])
        cumulative, buckets = 0.0, []
        for bound, count in zip(LATENCY_BUCKETS, bounds, strict=True):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", float(total[1])))
        result.add_metric([connector], buckets, float(total[0]))
    return result


def _histogram(values: list[float]) -> tuple[list[float], tuple[float, float]]:
    """Per-bound counts (not cumulative) and (sum, count) of a Counters histogram, which
    keeps [per-bound counts..., +Inf, sum, count]."""
    n = len(LATENCY_BUCKETS)
    if len(values) < n + 3:
        return [0.0] * n, (0.0, 0.0)
    bounds, count = [float(v) for v in values[:n]], float(values[-1])
    return bounds, (float(values[-2]), count)  # [bounds..., +Inf, sum, count]


def _others(counts: _Counts) -> Iterator[Metric]:
    """Counters and gauges a stage bumps that the catalog does not list."""
    for name, series in counts.unused("counters"):
        result = Metric(name.removesuffix("_total"), f"{name} (a stage's counter).", "counter")
        for labels, value in series:
            result.add_sample(result.name + "_total", labels, float(value))
        yield result
    for name, series in counts.unused("gauges"):
        result = Metric(name, f"{name} (a stage's gauge).", "gauge")
        for labels, value in series:
            result.add_sample(name, labels, float(value))
        yield result


def _per_node(
    read: Callable[[dict[str, Any]], float], *state: str
) -> Callable[[MetricType, _Scrape], Metric]:
    """A gauge per node of the status answer's `nodes` (labelled with its state if asked)."""

    def build(metric: MetricType, scrape: _Scrape) -> Metric:
        result = family(metric)
        for node in scrape.status.get("nodes") or []:
            labels = [str(node.get("name"))] + [str(node.get(k)) for k in state]
            result.add_metric(labels, read(node))
        return result

    return build


def _busy(node: dict[str, Any]) -> float:
    return float(sum(1 for t in node.get("work") or [] if (t.get("work") or {}).get("queue_id")))


BUILDERS: dict[MetricType, Callable[[MetricType, _Scrape], Metric]] = {
    m.INFO: _info,
    m.HEALTHY: _value(lambda s: 1 if s.get("healthy") else 0),
    m.UPTIME: _value(lambda s: float(s.get("uptime", 0.0))),
    m.RESTARTS: _value(lambda s: float(s.get("restarts", 0))),
    m.ABANDONED_THREADS: _value(lambda s: float(s.get("abandoned", 0))),
    m.CONFIG_RELOAD_OK: _value(lambda s: 1 if _config(s).get("last_reload_ok", True) else 0),
    m.CONFIG_RELOAD_TIME: _value(lambda s: float(_config(s).get("last_reload_success", 0.0))),
    m.STALLED_THREADS: _stalled,
    m.QUEUE_LENGTH: _per_queue(lambda q: float(q.get("length", 0))),
    m.QUEUE_OLDEST_AGE: _per_queue(lambda q: float(q.get("oldest_age", 0.0))),
    m.QUEUE_RECIPIENTS: _by_state,
    m.CONNECTOR_PAUSED: _per_queue(lambda q: 1 if q.get("paused") else 0),
    m.CONNECTOR_THREADS: _per_queue(lambda q: float(q.get("threads", 0))),
    m.CONNECTOR_CONNECTIONS: _per_queue(lambda q: float(q.get("connections", 0))),
    m.CONNECTOR_DOWN: _per_queue(lambda q: 1 if q.get("down") else 0),
    m.DELIVERED: _outcome("delivered"),
    m.DEFERRED: _outcome("deferred"),
    m.BOUNCED: _outcome("bounced"),
    m.DELIVERY_LATENCY: _latency,
    m.THREAD_CPU: _thread_cpu,
    m.THREAD_STATE: _thread_state,
    m.NODE_UP: _per_node(lambda n: 1 if n.get("state") == "alive" else 0, "state"),
    m.NODE_HEARTBEAT_AGE: _per_node(lambda n: float(n.get("heartbeat_age", 0.0))),
    m.NODE_BUSY_THREADS: _per_node(_busy),
}


class StatusCollector:
    """A prometheus_client collector reading `status()` afresh on every scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        return build_metrics(self._status())


def render(status: dict[str, Any]) -> bytes:
    """The Prometheus text format of one status answer."""
    return generate_latest(StatusCollector(lambda: status))
