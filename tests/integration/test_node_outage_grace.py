"""After an outage of the store longer than node_timeout every node was silent: the first
to heart-beat again must not declare the others dead (and release their work) before they
had one node_timeout to heart-beat too. A node merely silent while this one was fine is
declared dead at once. The node thread's turn (service/nodes.py), on real PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

from mailgate.config.load import parse_config
from mailgate.observe.events import EventLog
from mailgate.queue import nodes
from mailgate.queue.nodes import NodeRow
from mailgate.service.nodes import Membership, NodePart
from tests.support.stores import open_store, sql


def test_node_outage_grace_before_judging_the_others(tmp_path: Path) -> None:
    with open_store("postgres", tmp_path) as backend:
        config = parse_config({"service": {"node": "me", "data_dir": str(tmp_path)},
                               "queue": {"node_timeout": "3s"}})  # fmt: skip
        events = EventLog()
        member = Membership(config, backend, events)
        member.join()
        conn = backend.connect()
        conn.begin()
        nodes.join(conn, NodeRow("other", "i2", "h2", 7, "/d2", 0, 0, "alive", []), 3, "db")
        conn.commit()
        sql(backend, "UPDATE nodes SET heartbeat_at = heartbeat_at - 60")  # everyone silent
        part = NodePart(config, events, lambda: member, lambda: [], lambda reason: None)
        outage_began = time.monotonic() - 60
        assert part._turn(conn, member, outage_began)
        assert dict(sql(backend, "SELECT name, state FROM nodes")) == {
            "me": "alive",
            "other": "alive",
        }, "the other node gets its node_timeout to come back"
        part.grace_until = 0.0  # ... and once it is over, a silent node is dead
        assert part._turn(conn, member, None)
        assert dict(sql(backend, "SELECT name, state FROM nodes"))["other"] == "dead"
        conn.close()
