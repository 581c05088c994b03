"""Counters: labels, gauges, histograms and merging snapshots of several processes."""

from mailgate.observe.counters import Counters, merge
from mailgate.observe.metrics import LATENCY_BUCKETS


def test_counts_gauges_and_histograms() -> None:
    c = Counters()
    c.add("mailgate_messages_received_total", source="smtp")
    c.add("mailgate_messages_received_total", 2, source="smtp")
    c.gauge("mailgate_smtp_sessions_open", 1)
    c.gauge("mailgate_smtp_sessions_open", -1)
    c.observe("mailgate_delivery_latency_seconds", 0.02, connector="postoffice")
    snap = c.snapshot()
    assert snap["counters"] == {'mailgate_messages_received_total{source="smtp"}': 3.0}
    assert snap["gauges"] == {"mailgate_smtp_sessions_open": 0.0}
    hist = snap["histograms"]['mailgate_delivery_latency_seconds{connector="postoffice"}']
    assert len(hist) == len(LATENCY_BUCKETS) + 3
    assert hist[LATENCY_BUCKETS.index(0.025)] == 1 and hist[-2:] == [0.02, 1]


def test_merge_adds_processes_up() -> None:
    a, b = Counters(), Counters()
    a.add("x_total", 2)
    b.add("x_total", 3)
    b.add("y_total")
    a.observe("h", 1.0)
    b.observe("h", 100.0)
    merged = merge([a.snapshot(), b.snapshot()])
    assert merged["counters"] == {"x_total": 5.0, "y_total": 1.0}
    assert merged["histograms"]["h"][-1] == 2 and merged["histograms"]["h"][-2] == 101.0


def test_a_latency_beyond_the_last_bound_lands_in_the_inf_slot() -> None:
    c = Counters()
    c.observe("h", 7200.0)
    hist = c.snapshot()["histograms"]["h"]
    assert hist[len(LATENCY_BUCKETS)] == 1 and hist[-2:] == [7200.0, 1]
