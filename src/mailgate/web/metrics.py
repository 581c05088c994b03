"""Prometheus metrics of the whole service, built at scrape time from one status answer.

The status (the JSON of `mailgate ctl status`, with its merged counters) holds all
there is: queues, every process's threads, restarts, health and the counters the
stages bump (observe/counters.py). `StatusCollector` turns it into metric
families on each scrape; nothing is registered globally and nothing is kept
between scrapes. Known series are always reported, with zeros, so a dashboard
or an alert never sees a series appear or vanish with the traffic. Counters the
stages add later that are not listed here are exposed as they are.
"""

from __future__ import annotations

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

from mailgate.model import OPEN_STATES
from mailgate.observe.counters import LATENCY_BUCKETS

STATES = tuple(s.value for s in OPEN_STATES)  # the queue gauges' `state` label values
SOURCES = ("smtp", "pickup")
OUTCOMES = ("delivered", "deferred", "bounced", "quarantined")
LATENCY = "mailgate_delivery_latency_seconds"
SIMPLE_COUNTERS = {
    "mailgate_smtp_sessions_total": "SMTP sessions accepted.",
    "mailgate_smtp_recipients_rejected_total": "RCPT TO commands refused.",
    "mailgate_messages_refused_total": "Messages refused after DATA (nothing was queued).",
    "mailgate_postoffice_quota_scans_total": "Mailboxes listed to rebuild their size "
    "(maildirsize) for [postoffice] quota; rare once each mailbox has its file.",
}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


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


def build_metrics(status: dict[str, Any]) -> list[Metric]:
    """Every metric family of the service, from a status answer."""
    counts = _Counts(status.get("counters") or {})
    connectors = list(status.get("queues") or {})
    return [
        *_service(status),
        *_queues(status.get("queues") or {}),
        *_received(counts),
        *_delivery(counts, connectors),
        *_smtp(counts),
        *_threads(status),
        *_others(counts),
    ]


def _service(status: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("mailgate_info", "The running version.", labels=["version"])
    info.add_metric([str(status.get("version", ""))], 1)
    yield info
    yield GaugeMetricFamily(
        "mailgate_healthy", "1 if the service is healthy (see /healthz for why not).",
        value=1 if status.get("healthy") else 0,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "mailgate_uptime_seconds", "Seconds since the service started.",
        value=float(status.get("uptime", 0.0)),
    )  # fmt: skip
    yield CounterMetricFamily(
        "mailgate_restarts", "Restarts of supervised threads and worker processes.",
        value=float(status.get("restarts", 0)),
    )  # fmt: skip
    yield CounterMetricFamily(
        "mailgate_abandoned_threads", "Stalled threads abandoned and replaced.",
        value=float(status.get("abandoned", 0)),
    )  # fmt: skip
    config = status.get("config") or {}
    yield GaugeMetricFamily(
        "mailgate_config_last_reload_successful",
        "1 if the last configuration reload was taken (0: refused, event 1100; the service "
        "runs on the configuration it had).",
        value=1 if config.get("last_reload_ok", True) else 0,
    )
    yield GaugeMetricFamily(
        "mailgate_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded (start or reload), as a Unix time.",
        value=float(config.get("last_reload_success", 0.0)),
    )
    stalled = sum(1 for t in _all_threads(status) if t.get("state") == "stalled")
    yield GaugeMetricFamily(
        "mailgate_stalled_threads", "Threads stalled right now (busy, no progress).",
        value=stalled,
    )  # fmt: skip


def _queues(queues: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    length = GaugeMetricFamily(
        "mailgate_queue_length", "Recipients waiting for a connector (every state).",
        labels=["connector"],
    )  # fmt: skip
    oldest = GaugeMetricFamily(
        "mailgate_queue_oldest_age_seconds",
        "Age of the oldest recipient waiting for a connector (0 when none waits).",
        labels=["connector"],
    )
    by_state = GaugeMetricFamily(
        "mailgate_queue_recipients", "Recipients waiting for a connector, by state.",
        labels=["connector", "state"],
    )  # fmt: skip
    paused = GaugeMetricFamily(
        "mailgate_connector_paused", "1 if delivery by the connector is paused.",
        labels=["connector"],
    )  # fmt: skip
    for name, entry in queues.items():
        length.add_metric([name], float(entry.get("length", 0)))
        oldest.add_metric([name], float(entry.get("oldest_age", 0.0)))
        for state in STATES:
            by_state.add_metric([name, state], float(entry.get(state, 0)))
        paused.add_metric([name], 1 if entry.get("paused") else 0)
    yield from (length, oldest, by_state, paused)


def _received(counts: _Counts) -> Iterator[Metric]:
    for name, doc in (
        ("mailgate_messages_received", "Messages accepted and queued, by source."),
        ("mailgate_bytes_received", "Bytes of the messages accepted and queued, by source."),
    ):
        family = CounterMetricFamily(name, doc, labels=["source"])
        sources = counts.values("counters", f"{name}_total", "source")
        for source in sorted(set(SOURCES) | sources):
            family.add_metric([source], counts.total("counters", f"{name}_total", source=source))
        yield family


def _delivery(counts: _Counts, connectors: list[str]) -> Iterator[Metric]:
    attempts = "mailgate_attempts_total"
    connectors = sorted(set(connectors) | counts.values("counters", attempts, "connector"))
    outcomes = sorted(set(OUTCOMES) | counts.values("counters", attempts, "outcome"))
    family = CounterMetricFamily(
        "mailgate_attempts", "Delivery attempts recorded, by connector and outcome.",
        labels=["connector", "outcome"],
    )  # fmt: skip
    for connector in connectors:
        for outcome in outcomes:
            value = counts.total("counters", attempts, connector=connector, outcome=outcome)
            family.add_metric([connector, outcome], value)
    yield family
    for outcome, doc in (
        ("delivered", "Recipients delivered."),
        ("deferred", "Delivery attempts that failed temporarily (the recipient is retried)."),
        ("bounced", "Recipients that failed permanently (a bounce is sent)."),
    ):
        family = CounterMetricFamily(f"mailgate_{outcome}", doc, labels=["connector"])
        for connector in connectors:
            value = counts.total("counters", attempts, connector=connector, outcome=outcome)
            family.add_metric([connector], value)
        yield family
    yield _latency(counts, connectors)


def _latency(counts: _Counts, connectors: list[str]) -> Metric:
    family = HistogramMetricFamily(
        LATENCY, "Seconds from receipt to delivery of each delivered recipient.",
        labels=["connector"],
    )  # fmt: skip
    found = {labels.get("connector", ""): v for labels, v in counts.series("histograms", LATENCY)}
    for connector in sorted(set(connectors) | set(found) - {""}):
        bounds, total = _histogram(found.get(connector) or [])
        cumulative, buckets = 0.0, []
        for bound, count in zip(LATENCY_BUCKETS, bounds, strict=True):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", float(total[1])))
        family.add_metric([connector], buckets, float(total[0]))
    return family


def _histogram(values: list[float]) -> tuple[list[float], tuple[float, float]]:
    """Per-bound counts (not cumulative) and (sum, count) of a Counters histogram, which
    keeps [per-bound counts..., +Inf, sum, count]."""
    n = len(LATENCY_BUCKETS)
    if len(values) < n + 3:
        return [0.0] * n, (0.0, 0.0)
    bounds, count = [float(v) for v in values[:n]], float(values[-1])
    return bounds, (float(values[-2]), count)  # [bounds..., +Inf, sum, count]


def _smtp(counts: _Counts) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "mailgate_smtp_sessions_open", "SMTP sessions open now.",
        value=counts.total("gauges", "mailgate_smtp_sessions_open"),
    )  # fmt: skip
    for name, doc in SIMPLE_COUNTERS.items():
        yield CounterMetricFamily(name, doc, value=counts.total("counters", name))


def _all_threads(status: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for process in status.get("processes") or []:
        yield from process.get("threads") or []


def _threads(status: dict[str, Any]) -> Iterator[Metric]:
    cpu = CounterMetricFamily(
        "mailgate_thread_cpu_seconds", "CPU seconds used by each supervised thread (this life).",
        labels=["process", "thread"],
    )  # fmt: skip
    state = GaugeMetricFamily(
        "mailgate_thread_state", "The state of each supervised thread (1 for its current state).",
        labels=["process", "thread", "state"],
    )  # fmt: skip
    for process in status.get("processes") or []:
        pname = str(process.get("name") or process.get("role") or process.get("pid"))
        for thread in process.get("threads") or []:
            name = str(thread.get("name"))
            if thread.get("cpu_seconds") is not None:
                cpu.add_metric([pname, name], float(thread["cpu_seconds"]))
            state.add_metric([pname, name, str(thread.get("state"))], 1)
    yield from (cpu, state)


def _others(counts: _Counts) -> Iterator[Metric]:
    """Counters and gauges the stages bump that this module does not know yet."""
    for name, series in counts.unused("counters"):
        family = Metric(name.removesuffix("_total"), f"{name} (a stage's counter).", "counter")
        for labels, value in series:
            family.add_sample(family.name + "_total", labels, float(value))
        yield family
    for name, series in counts.unused("gauges"):
        family = Metric(name, f"{name} (a stage's gauge).", "gauge")
        for labels, value in series:
            family.add_sample(name, labels, float(value))
        yield family


class StatusCollector:
    """A prometheus_client collector reading `status()` afresh on every scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        return build_metrics(self._status())


def render(status: dict[str, Any]) -> bytes:
    """The Prometheus text format of one status answer."""
    return generate_latest(StatusCollector(lambda: status))
