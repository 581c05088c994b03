"""The dashboard's node view from a fake `nodes` list (as `ctl status --json` has it): the
rows, and the Overview panel and Threads sections the templates make of them."""

from __future__ import annotations

from typing import Any

from mailgate.web.nodes import node_rows, summary
from mailgate.web.pages import ENV
from mailgate.web.samples import SampleRing

FRAME = {"title": "t", "nav": [], "read_only": True, "logged_in": False, "csrf": "",
         "may_act": False, "flash": None, "flash_error": False}  # fmt: skip


def thread(name: str, queue_id: str | None = None, age: float = 0.0) -> dict[str, Any]:
    work = None if queue_id is None else {
        "queue_id": queue_id, "recipient": "bob@example.test", "connector": "smarthost",
        "since": 1000.0, "age": age,
    }  # fmt: skip
    return {"process": "single", "thread": name, "state": "busy" if work else "idle",
            "cpu_seconds": 0.1, "work": work}  # fmt: skip


def node(name: str, state: str, beat: float, *threads: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "state": state, "host": f"{name}.host", "pid": 42,
            "data_dir": "/d", "started_at": 1.0, "last_heartbeat": 2.0,
            "heartbeat_age": beat, "work": list(threads)}  # fmt: skip


STATUS = {"healthy": True, "reasons": [], "queues": {}, "uptime": 5.0, "state": "running"}
NODES = [
    node("zeta", "stopped", 60.0),
    node("beta", "dead", 9.0, thread("smarthost-1", "Q1<b>", age=2.0), thread("smtp")),
    node("alpha", "alive", 0.5, thread("postoffice-1", "Q2", age=1.0), thread("node")),
]


def test_this_node_comes_first_and_a_dead_nodes_work_is_released() -> None:
    rows = node_rows(NODES, "alpha")
    assert [(r["name"], r["here"], r["row"]) for r in rows] == [
        ("alpha", True, ""),
        ("beta", False, "bad"),
        ("zeta", False, "muted"),
    ]
    beta = rows[1]
    assert beta["busy"] == 1 and len(beta["threads"]) == 2
    busy = beta["threads"][0]
    assert busy["released"] and busy["queue_id"] == "Q1<b>"
    assert busy["age"] == 11.0, "its age at the heart-beat plus the heart-beat's age"
    assert not beta["threads"][1]["released"], "an idle thread held nothing"
    assert not rows[0]["threads"][0]["released"], "a live node's work is its own"
    assert summary(rows) == {"alive": 1, "dead": 1, "stopped": 1}
    assert (
        node_rows([{"name": None, "work": ["junk", {"work": 3}]}], "x")[0]["threads"][0]["busy"]
        is False
    )


def test_the_overview_panel_marks_this_node_and_the_dead_one() -> None:
    rows = node_rows(NODES, "alpha")
    html = ENV.get_template("overview.html").render(
        **FRAME, status=STATUS, rates={}, states=[],
        chart="", samples=0, every=2, nodes=rows, node_counts=summary(rows), dead_event=1042,
    )  # fmt: skip
    assert 'id="nodes"' in html
    assert '<tr class=" here" data-node="alpha" data-state="alive">' in html
    assert '<tr class="bad" data-node="beta" data-state="dead">' in html
    assert html.count("(this page)") == 1
    assert '<td class="node-dead">dead</td>' in html and "9.0s ago" in html
    assert 'href="/events?id=1042"' in html, "a link to who declared it dead"
    assert html.count("released-mark") == 1, "the dead node's busy threads: released"
    empty = ENV.get_template("overview.html").render(
        **FRAME, status=STATUS, rates={}, states=[],
        chart="", samples=0, every=2, nodes=[], node_counts={}, dead_event=1042,
    )  # fmt: skip
    assert 'id="nodes"' not in empty, "no panel when the store says nothing of nodes"


def test_the_threads_page_groups_by_node_and_escapes_the_stores_words() -> None:
    rows = node_rows(NODES, "alpha")
    html = ENV.get_template("threads.html").render(
        **FRAME, processes=[], threads=[], troubled=0, here=rows[0], others=rows[1:],
        node_counts=summary(rows), dead_event=1042,
    )  # fmt: skip
    assert 'id="node-alpha"' in html and "Node alpha (this page)" in html
    assert '<section class="node bad" id="node-beta" data-node="beta" data-state="dead">' in html
    assert "declared dead" in html and 'class="released"' in html
    assert "Q1&lt;b&gt;" in html and "Q1<b>" not in html, "the store's words are text"
    assert html.count("released-mark") == 1
    assert "Stopped cleanly" in html
    assert "1 alive" in html and "1 dead" in html


def test_other_nodes_cpu_is_measured_between_their_heart_beats() -> None:
    ring = SampleRing()

    def beat(at: float, cpu: float) -> dict[str, Any]:
        beta = node("beta", "alive", 0.1, {**thread("smtp"), "cpu_seconds": cpu})
        return {"pid": 1, "queues": {}, "nodes": [{**beta, "last_heartbeat": at}]}

    ring.add(beat(100.0, 1.0), 1.0)
    ring.add(beat(100.0, 1.0), 3.0)  # no new heart-beat since: no new point
    ring.add(beat(104.0, 2.0), 5.0)
    ring.add(beat(106.0, 3.0), 7.0)
    assert ring.node_cpu_percent("beta", "single/smtp") == [25.0, 50.0]
    assert ring.node_cpu_percent("gamma", "single/smtp") == []
    ring.add({"pid": 1, "queues": {}, "nodes": [{"name": "beta", "work": "junk"}]}, 9.0)
    assert ring.node_cpu_percent("beta", "single/smtp") == [], "a node no longer read is forgotten"
