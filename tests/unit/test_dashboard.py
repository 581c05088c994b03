"""The dashboard's pure pieces: the sample ring, the charts, the token rules, the filters."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from mailgate.observe.catalog import CATALOG, Severity
from mailgate.web import auth
from mailgate.web.charts import overview_chart, sparkline
from mailgate.web.event_pages import query_of
from mailgate.web.queue_pages import _back
from mailgate.web.samples import SampleRing

TOKEN = "t0ken"


def status(pid: int, queued: int, delivered: float, cpu: float, state: str = "idle") -> Any:
    return {
        "pid": pid,
        "reasons": [],
        "queues": {"postoffice": {"length": queued}},
        "counters": {"counters": {'mailgate_delivered_total{connector="postoffice"}': delivered}},
        "processes": [
            {"name": "w", "threads": [{"name": "t", "state": state, "cpu_seconds": cpu}]}
        ],
    }


def test_the_ring_gives_rates_and_cpu_between_neighbouring_samples() -> None:
    ring = SampleRing(size=10)
    assert ring.rates()["delivered"] is None, "one sample is no rate"
    ring.add(status(1, 5, 10, 1.0), 100.0)
    ring.add(status(1, 7, 30, 1.5), 102.0)
    assert ring.rates()["delivered"] == 10.0
    assert ring.delivery_rates() == [(102.0, 10.0)]
    assert ring.cpu_percent("w/t") == [25.0]
    assert [s.queued for s in ring.samples()] == [5, 7]


def test_a_new_pid_starts_a_new_chart_and_the_ring_is_bounded() -> None:
    ring = SampleRing(size=3)
    for n in range(5):
        ring.add(status(1, n, n, 0), float(n))
    assert [s.queued for s in ring.samples()] == [2, 3, 4]
    ring.add(status(2, 9, 0, 0), 10.0)  # the service restarted: counters from zero
    assert [s.queued for s in ring.samples()] == [9]
    ring.add({"pid": 2, "queues": "not a table"}, 11.0)  # malformed: skipped
    assert len(ring.samples()) == 1


def test_a_stall_is_marked_from_the_state_or_from_stall_events_between_samples() -> None:
    ring = SampleRing()
    ring.add(status(1, 1, 0, 0), 1.0, stall_events=0)
    ring.add(status(1, 1, 0, 0, state="stalled"), 3.0, stall_events=0)
    ring.add(status(1, 1, 0, 0), 5.0, stall_events=0)
    ring.add(status(1, 1, 0, 0), 7.0, stall_events=2)  # freed before this sample
    assert [s.stalled for s in ring.samples()] == [False, True, False, True]
    chart = overview_chart(ring.samples(), ring.delivery_rates(), 8.0)
    assert chart.count('class="stall"') == 3 and "stalled</tspan>" in chart


def test_charts_escape_what_they_are_given() -> None:
    line = sparkline([1.0, 50.0, 100.0], "<script>x</script>")
    assert "<script>" not in line and "&lt;script&gt;" in line and "<polyline" in line
    assert "<polyline" not in sparkline([1.0]), "no line from one point"


def request(*, bearer: str | None = None, cookie: str | None = None) -> Request:
    headers = []
    if bearer is not None:
        headers.append((b"authorization", f"Bearer {bearer}".encode()))
    if cookie is not None:
        headers.append((b"cookie", f"{auth.COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_who_may_read_and_act() -> None:
    session, csrf = auth.session_value(TOKEN), auth.csrf_value(TOKEN)
    assert session != TOKEN and csrf != session, "the cookie and the field are not the token"
    assert auth.may_read(request(), "") and not auth.may_read(request(), TOKEN)
    assert auth.may_read(request(bearer=TOKEN), TOKEN)
    assert auth.may_read(request(cookie=session), TOKEN)
    assert not auth.may_read(request(cookie=TOKEN), TOKEN), "the token is no cookie"
    assert "read-only" in str(auth.may_act(request(), "", {"csrf": csrf}))
    assert auth.may_act(request(bearer=TOKEN), TOKEN, {}) is None
    assert "CSRF" in str(auth.may_act(request(cookie=session), TOKEN, {}))
    assert "CSRF" in str(auth.may_act(request(cookie=session), TOKEN, {"csrf": "x"}))
    assert auth.may_act(request(cookie=session), TOKEN, {"csrf": csrf}) is None
    assert "token" in str(auth.may_act(request(bearer="wrong"), TOKEN, {"csrf": csrf}))


def test_event_filters_keep_to_the_catalog() -> None:
    query = query_of({"severity": "error"}, 1000.0)
    assert query["ids"] and all(
        CATALOG[i].severity in (Severity.ERROR, Severity.CRITICAL) for i in query["ids"]
    )
    assert query_of({"id": "5003, 2400", "severity": "error"}, 0)["ids"] == [5003]
    assert query_of({"id": "2400", "severity": "error"}, 0)["ids"] == [-1], "none has both"
    assert query_of({"since": "10"}, 1000.0)["since"] == 400.0
    for bad in ({"category": "Nope"}, {"severity": "loud"}, {"id": "x"}, {"since": "soon"}):
        with pytest.raises(ValueError):
            query_of(bad, 0)


def test_redirects_after_an_action_stay_on_the_listener() -> None:
    assert _back("https://evil.example/", "done", False).headers["location"].startswith("/queue?")
    assert _back("//evil.example/", "done", False).headers["location"].startswith("/queue?")
    location = _back("/queue?state=held&flash=old", "new", True).headers["location"]
    assert location == "/queue?state=held&flash=new&error=1"
