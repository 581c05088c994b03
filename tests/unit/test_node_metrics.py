"""/metrics shows every node of the status answer: up, heart-beat age, busy threads."""

from __future__ import annotations

from mailgate.observe.counters import Counters
from mailgate.web.metrics import render
from tests.unit.test_admin import samples, status


def test_every_node_in_the_metrics() -> None:
    answer = status(Counters().snapshot())
    busy = {"thread": "postoffice-1", "work": {"queue_id": "Q1"}}
    answer["nodes"] = [
        {"name": "n1", "state": "alive", "heartbeat_age": 0.4, "work": [busy, {"work": None}]},
        {"name": "n2", "state": "dead", "heartbeat_age": 31.0, "work": []},
    ]
    got = samples(render(answer))
    assert got[("mailgate_node_up", frozenset({("node", "n1"), ("state", "alive")}))] == 1
    assert got[("mailgate_node_up", frozenset({("node", "n2"), ("state", "dead")}))] == 0
    assert got[("mailgate_node_heartbeat_age_seconds", frozenset({("node", "n2")}))] == 31.0
    assert got[("mailgate_node_busy_threads", frozenset({("node", "n1")}))] == 1
