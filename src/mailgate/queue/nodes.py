"""The nodes that share one queue: their names, heart-beats, and the leases they hold.

Every lease owner a node writes begins with `node_owner(node)`, so one prefix names all
the leases of one node, whatever its processes and threads (interchange/worker.py
builds the rest). A node that starts gives back only its own leases: in a shared store
the others' belong to live nodes.

The `nodes` table holds one row per name: the instance (a token of one run) that owns
it, where it runs, its last heart-beat and state (alive, dead, stopped) and a summary of
its threads' work, for `ctl status` on any node. Times are the store's clock where it
has one (PostgreSQL: the server's, so the nodes' clocks need not agree), else this
machine's. `join` refuses a name another live instance holds, unless that instance ran
on this host and data directory: the data directory lock just taken proves it is gone,
so a node restarted after a crash rejoins at once. `declare_dead` is a guarded UPDATE:
of several live nodes that see one silent, exactly one wins and releases its leases.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mailgate.errors import StoreError
from mailgate.queue.backend import POSTGRES, Connection

ALIVE, DEAD, STOPPED = "alive", "dead", "stopped"
_COLUMNS = "name, instance, host, pid, data_dir, started_at, heartbeat_at, state, work"


def node_owner(node: str) -> str:
    """The prefix of the lease owners of every thread of `node`, in every process."""
    return f"{node}:"


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    instance: str
    host: str
    pid: int
    data_dir: str
    started_at: float
    heartbeat_at: float
    state: str
    work: list[dict[str, Any]]

    def json(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "host": self.host,
            "pid": self.pid,
            "data_dir": self.data_dir,
            "started_at": self.started_at,
            "last_heartbeat": self.heartbeat_at,
            "heartbeat_age": round(now - self.heartbeat_at, 2),
            "work": self.work,
        }


class NodeNameInUse(StoreError):
    """Another live instance holds this node name."""

    def __init__(self, holder: NodeRow, store: str, age: float) -> None:
        self.holder, self.store, self.age = holder, store, round(age, 1)
        super().__init__(
            f"node {holder.name} is already alive in the queue {store} (host {holder.host}, "
            f"pid {holder.pid}, data {holder.data_dir}, heard from {self.age}s ago)"
        )


def store_now(conn: Connection) -> float:
    """The store's clock: the database server's where there is one."""
    if conn.dialect is POSTGRES:
        return float(conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])
    return time.time()


def _row(values: Any) -> NodeRow:
    name, instance, host, pid, data_dir, started, beat, state, work = values
    try:
        threads = json.loads(work) if work else []
    except ValueError:
        threads = []
    return NodeRow(name, instance, host, int(pid), data_dir, float(started), float(beat), state,
                   threads if isinstance(threads, list) else [])  # fmt: skip


def _find(conn: Connection, name: str) -> NodeRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM nodes WHERE name = ?" + conn.dialect.for_update(), (name,)
    ).fetchone()
    return None if row is None else _row(row)


def join(conn: Connection, me: NodeRow, timeout: float, store: str) -> list[NodeRow]:
    """Register `me` (inside a transaction): NodeNameInUse if another live instance holds
    the name; else the row is `me`'s, alive. Returns every node, `me` among them."""
    now = store_now(conn)
    held = _find(conn, me.name)
    if held is not None and held.instance != me.instance and held.state == ALIVE:
        same_place = (held.host, held.data_dir) == (me.host, me.data_dir)
        if not same_place and now - held.heartbeat_at < timeout:
            raise NodeNameInUse(held, store, now - held.heartbeat_at)
    conn.execute(
        f"INSERT INTO nodes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '') "
        "ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, host = excluded.host, "
        "pid = excluded.pid, data_dir = excluded.data_dir, started_at = excluded.started_at, "
        "heartbeat_at = excluded.heartbeat_at, state = excluded.state, work = ''",
        (me.name, me.instance, me.host, me.pid, me.data_dir, now, now, ALIVE),
    )
    return all_nodes(conn)


@dataclass(frozen=True, slots=True)
class Beat:
    """What a heart-beat found: `taken` by another instance, or `rejoined` after being
    declared dead (silent that long), or neither."""

    taken: NodeRow | None = None
    rejoined: float | None = None


def beat(conn: Connection, name: str, instance: str, work: list[dict[str, Any]]) -> Beat:
    """Heart-beat (inside a transaction), with a summary of this node's threads' work."""
    now = store_now(conn)
    held = _find(conn, name)
    if held is None:
        raise StoreError(f"node {name} has no entry in the queue: it rejoins at its next start")
    if held.instance != instance and held.state == ALIVE:
        return Beat(taken=held)
    conn.execute(
        "UPDATE nodes SET heartbeat_at = ?, state = ?, work = ?, instance = ? WHERE name = ?",
        (now, ALIVE, json.dumps(work), instance, name),
    )
    back = held.state == DEAD or held.instance != instance
    return Beat(rejoined=now - held.heartbeat_at if back else None)


def silent(conn: Connection, name: str, timeout: float) -> list[NodeRow]:
    """Other nodes not heard from for `timeout` that have not left (alive or dead)."""
    cutoff = store_now(conn) - timeout
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM nodes WHERE name <> ? AND state IN (?, ?) "
        "AND heartbeat_at < ? ORDER BY name",
        (name, ALIVE, DEAD, cutoff),
    ).fetchall()
    return [_row(row) for row in rows]


def declare_dead(conn: Connection, node: NodeRow, timeout: float) -> bool:
    """Mark `node` dead if it is still that silent instance; True for the one that did."""
    cutoff = store_now(conn) - timeout
    cur = conn.execute(
        "UPDATE nodes SET state = ? WHERE name = ? AND instance = ? AND state = ? "
        "AND heartbeat_at < ?",
        (DEAD, node.name, node.instance, ALIVE, cutoff),
    )
    return cur.rowcount == 1


def leave(conn: Connection, name: str, instance: str) -> None:
    """A clean stop: the node's row says `stopped` (it is never declared dead)."""
    conn.execute(
        "UPDATE nodes SET state = ?, work = '' WHERE name = ? AND instance = ?",
        (STOPPED, name, instance),
    )


def all_nodes(conn: Connection) -> list[NodeRow]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY name").fetchall()
    return [_row(row) for row in rows]


def node_view(conn: Connection, timeout: float) -> tuple[float, list[NodeRow]]:
    """(the store's time, every node), a node silent past `timeout` shown as dead even
    before a live one declared it: what `ctl status` and /metrics show."""
    now = store_now(conn)
    rows = all_nodes(conn)
    return now, [
        _with_state(r, DEAD) if r.state == ALIVE and now - r.heartbeat_at > timeout else r
        for r in rows
    ]


def _with_state(row: NodeRow, state: str) -> NodeRow:
    return NodeRow(row.name, row.instance, row.host, row.pid, row.data_dir, row.started_at,
                   row.heartbeat_at, state, row.work)  # fmt: skip
