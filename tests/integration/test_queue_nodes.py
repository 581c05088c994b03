"""The nodes table (queue/nodes.py) on both stores: join, heart-beat, silence, death."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailgate.queue import nodes
from mailgate.queue.backend import Connection
from mailgate.queue.nodes import NodeNameInUse, NodeRow
from tests.support.stores import AnyBackend, sql


def row(name: str, instance: str, host: str = "h1", data_dir: str = "/d1") -> NodeRow:
    return NodeRow(name, instance, host, 100, data_dir, 0.0, 0.0, nodes.ALIVE, [])


def tx(backend: AnyBackend, op: Callable[[Connection], Any]) -> Any:
    conn = backend.connect()
    try:
        conn.begin()
        value = op(conn)
        conn.commit()
        return value
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def age(backend: AnyBackend, name: str, seconds: float) -> None:
    """Make `name`'s last heart-beat `seconds` old."""
    sql(backend, "UPDATE nodes SET heartbeat_at = heartbeat_at - ? WHERE name = ?",
        (seconds, name))  # fmt: skip


def test_a_live_name_is_refused_elsewhere_and_taken_back_where_it_ran(
    queue_backend: AnyBackend,
) -> None:
    tx(queue_backend, lambda c: nodes.join(c, row("a", "i1"), 15.0, "db"))
    with pytest.raises(NodeNameInUse, match=r"node a is already alive.*host h1"):
        tx(queue_backend, lambda c: nodes.join(c, row("a", "i2", host="h2"), 15.0, "db"))
    # The same host and data directory: the lock just taken proves the other run is gone.
    every = tx(queue_backend, lambda c: nodes.join(c, row("a", "i3"), 15.0, "db"))
    assert [(n.name, n.instance, n.state) for n in every] == [("a", "i3", "alive")]
    age(queue_backend, "a", 60)  # silent past the timeout: another place may take the name
    tx(queue_backend, lambda c: nodes.join(c, row("a", "i4", host="h2"), 15.0, "db"))


def test_a_silent_node_is_declared_dead_once_and_rejoins_by_beating(
    queue_backend: AnyBackend,
) -> None:
    for name, instance in (("a", "ia"), ("b", "ib"), ("c", "ic")):
        tx(queue_backend, lambda c, n=name, i=instance: nodes.join(c, row(n, i, host=n), 15, "db"))
    work = [{"thread": "postoffice-1", "work": {"queue_id": "Q1"}}]
    assert tx(queue_backend, lambda c: nodes.beat(c, "a", "ia", work)) == nodes.Beat()
    age(queue_backend, "c", 60)
    quiet = tx(queue_backend, lambda c: nodes.silent(c, "a", 15))
    assert [n.name for n in quiet] == ["c"]
    # Two live nodes see it; exactly one wins the declaration.
    won = [tx(queue_backend, lambda c: nodes.declare_dead(c, quiet[0], 15)) for _ in "ab"]
    assert won == [True, False]
    conn = queue_backend.connect()
    try:
        _, view = nodes.node_view(conn, 15)
    finally:
        conn.close()
    states = {n.name: n.state for n in view}
    assert states == {"a": "alive", "b": "alive", "c": "dead"}
    assert next(n for n in view if n.name == "a").work == work
    back = tx(queue_backend, lambda c: nodes.beat(c, "c", "ic", []))
    assert back.rejoined is not None and back.rejoined >= 60
    assert tx(queue_backend, lambda c: nodes.silent(c, "a", 15)) == []


def test_a_name_taken_while_silent_is_reported_to_the_silent_one(
    queue_backend: AnyBackend,
) -> None:
    tx(queue_backend, lambda c: nodes.join(c, row("a", "i1"), 15.0, "db"))
    age(queue_backend, "a", 60)
    tx(queue_backend, lambda c: nodes.join(c, row("a", "i2", host="h2"), 15.0, "db"))
    found = tx(queue_backend, lambda c: nodes.beat(c, "a", "i1", []))
    assert found.taken is not None and found.taken.host == "h2"


def test_a_stopped_node_is_never_declared_dead(queue_backend: AnyBackend) -> None:
    tx(queue_backend, lambda c: nodes.join(c, row("a", "ia"), 15.0, "db"))
    tx(queue_backend, lambda c: nodes.leave(c, "a", "ia"))
    age(queue_backend, "a", 600)
    assert tx(queue_backend, lambda c: nodes.silent(c, "b", 15)) == []
