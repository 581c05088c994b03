"""The dashboard's node view: every node sharing the queue, as `ctl status` has them.

Input is the control surface's answer (`status()["nodes"]`, `ControlSurface.nodes()`):
each node's name, state (alive, dead, stopped), host, pid, heart-beat age and the
summary of its threads' work it wrote with its last heart-beat. No query of its own:
what `ctl status` and `top` show on any node is what the pages show. `node_rows` turns
it into rows for the templates: this node (the one serving the page) first and marked,
the others by name; a dead node's row is "bad" (red), and its last known work is
flagged `released`: when a live node declared it dead it ended those leases at once
(service/nodes.py, event 1042), so the others deliver those recipients. The age of a
busy thread's work elsewhere is its age at that node's heart-beat plus the heart-beat's
age: how long it has been at it now, as far as the store knows. Pure: the unit tests
give it a fake list.
"""

from __future__ import annotations

from typing import Any

from mailgate.observe import catalog

DEAD_EVENT = catalog.NODE_DEAD.id  # who declared it dead, and how many leases it released
ROW_CLASS = {"dead": "bad", "stopped": "muted"}


def _threads(node: dict[str, Any], dead: bool) -> list[dict[str, Any]]:
    """The node's threads as its last heart-beat had them, each work with its age now."""
    beat_age = float(node.get("heartbeat_age") or 0.0)
    threads: list[dict[str, Any]] = []
    given = node.get("work")
    for thread in given if isinstance(given, list) else []:
        if not isinstance(thread, dict):
            continue  # another version's summary, or damage: what can be read is shown
        given_work = thread.get("work")
        work: dict[str, Any] = given_work if isinstance(given_work, dict) else {}
        age = work.get("age")
        busy = bool(work.get("queue_id"))
        threads.append({
            "process": str(thread.get("process") or ""),
            "thread": str(thread.get("thread") or ""),
            "state": str(thread.get("state") or ""),
            "queue_id": str(work["queue_id"]) if busy else "",
            "recipient": str(work.get("recipient") or ""),
            "connector": str(work.get("connector") or ""),
            "since": work.get("since"),
            "age": None if age is None or not busy else float(age) + beat_age,
            "busy": busy,
            "released": dead and busy,
            "cpu": None,  # % CPU and its sparkline: the page's, from the sample ring
            "spark": "",
        })  # fmt: skip
    return threads


def node_rows(nodes: list[dict[str, Any]], here: str) -> list[dict[str, Any]]:
    """Rows for the Nodes panel and the Threads page: `here` (this node) first."""
    rows: list[dict[str, Any]] = []
    for node in nodes:
        state = str(node.get("state") or "unknown")
        dead = state == "dead"
        threads = _threads(node, dead)
        rows.append({
            "name": str(node.get("name") or ""),
            "state": state,
            "host": str(node.get("host") or ""),
            "pid": node.get("pid"),
            "heartbeat_age": float(node.get("heartbeat_age") or 0.0),
            "last_heartbeat": node.get("last_heartbeat"),
            "threads": threads,
            "busy": sum(1 for t in threads if t["busy"]),
            "here": node.get("name") == here,
            "row": ROW_CLASS.get(state, ""),
        })  # fmt: skip
    rows.sort(key=lambda r: (not r["here"], r["name"]))
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many nodes are in each state (alive first), for the pages' one-line summary."""
    counts: dict[str, int] = {"alive": 0}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts
