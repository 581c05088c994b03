"""Admin pieces without a service: the [admin] settings, metrics built from a status answer,
and the master's counter totals across worker restarts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate.config import parse_config
from mailgate.errors import ConfigError
from mailgate.master.surface import MasterSurface
from mailgate.observe.counters import Counters
from mailgate.observe.metrics import LATENCY_BUCKETS
from mailgate.web.metrics import parse_key, render


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8025", "127.9.9.9:1", "[::1]:8025", "localhost:8025", ""]
)
def test_loopback_or_disabled_listeners_need_no_token(listen: str) -> None:
    assert parse_config({"admin": {"listen": listen}}).admin.listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:8025", "[::]:8025", "10.1.2.3:80", "admin.lan:80"])
def test_other_listeners_need_a_token(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"admin": {"listen": listen}})
    key, reason = info.value.problems[0]
    assert key == "admin" and "token" in reason
    config = parse_config({"admin": {"listen": listen, "token": "secret"}})
    assert "secret" not in repr(config)


def status(snapshot: dict[str, Any]) -> dict[str, Any]:
    queue = dict.fromkeys(("queued", "active", "deferred", "held", "quarantined"), 0)
    return {
        "version": "test", "healthy": False, "uptime": 1.0, "restarts": 2, "abandoned": 1,
        "queues": {"postoffice": {**queue, "length": 0, "oldest_age": 0.0, "paused": False}},
        "processes": [{"pid": 1, "role": "single", "threads": [
            {"name": "postoffice-1", "state": "stalled", "cpu_seconds": 1.5},
            {"name": "smtp", "state": "idle", "cpu_seconds": None},
        ]}],
        "counters": snapshot,
    }  # fmt: skip


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_from_a_status_answer() -> None:
    c = Counters()
    c.add("mailgate_attempts_total", connector="postoffice", outcome="delivered")
    c.add("mailgate_attempts_total", connector="smarthost", outcome="deferred")
    c.observe("mailgate_delivery_latency_seconds", 0.3, connector="postoffice")
    c.observe("mailgate_delivery_latency_seconds", 7200.0, connector="postoffice")  # past all
    c.add("mailgate_something_new_total", 4, kind="x")
    got = samples(render(status(c.snapshot())))
    po = frozenset({("connector", "postoffice")})
    assert got[("mailgate_delivered_total", po)] == 1
    assert got[("mailgate_deferred_total", frozenset({("connector", "smarthost")}))] == 1
    assert got[("mailgate_messages_received_total", frozenset({("source", "pickup")}))] == 0
    assert got[("mailgate_delivery_latency_seconds_count", po)] == 2
    assert got[("mailgate_delivery_latency_seconds_sum", po)] == pytest.approx(7200.3)
    bucket = po | {("le", "0.5")}
    assert got[("mailgate_delivery_latency_seconds_bucket", bucket)] == 1
    assert got[("mailgate_delivery_latency_seconds_bucket", po | {("le", "+Inf")})] == 2
    assert got[("mailgate_stalled_threads", frozenset())] == 1
    assert got[("mailgate_healthy", frozenset())] == 0
    stalled = {("process", "single"), ("thread", "postoffice-1"), ("state", "stalled")}
    assert got[("mailgate_thread_state", frozenset(stalled))] == 1
    assert ("mailgate_thread_cpu_seconds_total", frozenset({("process", "single"),
            ("thread", "smtp")})) not in got  # fmt: skip
    assert got[("mailgate_something_new_total", frozenset({("kind", "x")}))] == 4


def test_histogram_with_an_overflow_bucket_is_read_as_is() -> None:
    values = [0.0] * len(LATENCY_BUCKETS) + [1.0, 7200.0, 1.0]  # [bounds.., +Inf, sum, count]
    snapshot = {"histograms": {'mailgate_delivery_latency_seconds{connector="postoffice"}': values}}
    got = samples(render(status(snapshot)))
    po = frozenset({("connector", "postoffice")})
    assert got[("mailgate_delivery_latency_seconds_sum", po)] == 7200.0
    assert got[("mailgate_delivery_latency_seconds_count", po)] == 1


def test_parse_key() -> None:
    assert parse_key("plain_total") == ("plain_total", {})
    assert parse_key('x{a="1",b="two"}') == ("x", {"a": "1", "b": "two"})


def worker(name: str, pid: int | None, counters: dict[str, Any] | None) -> SimpleNamespace:
    status = {} if pid is None else {"pid": pid, "counters": counters}
    return SimpleNamespace(name=name, status=status)


def test_master_totals_never_go_back_when_a_worker_is_replaced() -> None:
    def snap(received: float, sessions_open: float) -> dict[str, Any]:
        return {
            "counters": {"mailgate_messages_received_total": received},
            "gauges": {"mailgate_smtp_sessions_open": sessions_open},
            "histograms": {},
        }

    master = SimpleNamespace(workers=[worker("receive-1", 10, snap(5, 2))])
    commands = MasterSurface(SimpleNamespace(), master)  # type: ignore[arg-type]
    assert commands.counters()["counters"]["mailgate_messages_received_total"] == 5
    master.workers = [worker("receive-1", None, None)]  # died; the replacement has not reported
    merged = commands.counters()
    assert merged["counters"]["mailgate_messages_received_total"] == 5
    assert merged["gauges"].get("mailgate_smtp_sessions_open", 0) == 0
    master.workers = [worker("receive-1", 11, snap(1, 1))]  # the replacement counts afresh
    merged = commands.counters()
    assert merged["counters"]["mailgate_messages_received_total"] == 6
    assert merged["gauges"]["mailgate_smtp_sessions_open"] == 1
    assert commands.counters()["counters"]["mailgate_messages_received_total"] == 6
