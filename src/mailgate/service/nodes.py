"""This node among those sharing the queue: it joins, heart-beats, and declares the dead.

The lock holder (the single-process service, or the master) joins at start, before it
gives back its own leases (`join_node`: two live nodes with one name are refused with
event 1040, so a second node never releases a live one's work). The `node` thread,
registered with the supervisor like every other, heart-beats every fifth of
[queue] node_timeout with a summary of this node's threads' work, and looks for nodes
silent past node_timeout: each such node is declared dead once from this node's point
of view (event 1042); the one live node that wins the declaration also ends the dead
node's leases at once (each an attempt without an outcome, as for a dead worker), so
the others deliver its recipients without waiting for the leases to run out. A failing
heart-beat is event 4080 (once until it works again); after an outage of the store
longer than node_timeout, when every node was silent, the others get one node_timeout
to heart-beat again before this node judges them; a name taken over by another
instance while this one was silent stops this one (1044). A clean stop marks the node
`stopped`: it is never declared dead. SQLite has one node; the code is the same.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from mailgate.config.schema import Config
from mailgate.errors import StoreError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue import nodes
from mailgate.queue.backend import Backend, Connection
from mailgate.queue.nodes import NodeRow, node_owner
from mailgate.queue.notify import announce_now
from mailgate.service.leases import end_dead_leases
from mailgate.service.part import Part
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor

Work = Callable[[], list[dict[str, Any]]]


def _tx(conn: Connection, op: Callable[[Connection], Any]) -> Any:
    conn.begin()
    try:
        value = op(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return value


class Membership:
    """This node's entry in the queue: its name and the instance token of this run."""

    def __init__(self, config: Config, backend: Backend, events: EventLog) -> None:
        self.config = config
        self.backend = backend
        self.events = events
        self.name = config.service.node
        self.instance = secrets.token_hex(8)
        self.where = str(getattr(backend, "where", getattr(backend, "path", backend.name)))

    def me(self) -> NodeRow:
        return NodeRow(self.name, self.instance, socket.gethostname(), os.getpid(),
                       str(self.config.data_dir.resolve()), 0.0, 0.0, nodes.ALIVE, [])  # fmt: skip

    def join(self) -> None:
        """Register, or raise NodeNameInUse (event 1040 is the caller's)."""
        conn = self.backend.connect()
        try:
            timeout = self.config.queue.node_timeout
            every = _tx(conn, lambda c: nodes.join(c, self.me(), timeout, self.where))
        finally:
            conn.close()
        alive = [n.name for n in every if n.state == nodes.ALIVE]
        self.events.emit(catalog.NODE_JOINED, node=self.name, store=self.where,
                         alive=len(alive), nodes=", ".join(alive))  # fmt: skip


class NodePart(Part):
    """The `node` thread of the lock holder: heart-beats and dead nodes."""

    def __init__(self, config: Config, events: EventLog, membership: Callable[[], Membership],
                 work: Work, fail: Callable[[str], None]) -> None:  # fmt: skip
        self.config = config
        self.events = events
        self.membership = membership  # set by the host's start, before the parts start
        self.work = work
        self.fail = fail
        self.declared: set[tuple[str, str]] = set()  # (name, instance) said dead here
        self.grace_until = 0.0  # monotonic: judge no other node before (see _recovered)

    def start(self, sup: Supervisor) -> None:
        sup.spawn("node", "node", self._run)

    def _run(self, handle: ThreadHandle) -> None:
        member = self.membership()
        every = self.config.queue.node_timeout / 5
        conn = member.backend.connect()
        failing_since: float | None = None
        try:
            while not handle.stopping:
                handle.busy()
                try:
                    if not self._turn(conn, member, failing_since):
                        return
                    failing_since = None
                except StoreError as exc:
                    if failing_since is None:
                        self.events.emit(catalog.NODE_HEARTBEAT_FAILED, node=member.name,
                                         error=str(exc))  # fmt: skip
                        failing_since = time.monotonic()
                handle.progress()
                handle.idle()
                handle.wait(every)
            with contextlib.suppress(StoreError):  # else it is declared dead: no loss either
                _tx(conn, lambda c: nodes.leave(c, member.name, member.instance))
        finally:
            conn.close()

    def _recovered(self, failing_since: float) -> None:
        """After an outage of the store longer than node_timeout every node was silent, not
        dead: give the others one node_timeout to heart-beat before judging them."""
        timeout = self.config.queue.node_timeout
        if time.monotonic() - failing_since >= timeout:
            self.grace_until = time.monotonic() + timeout

    def _turn(self, conn: Connection, member: Membership, failing_since: float | None) -> bool:
        """One heart-beat and one look at the others; False if this node must stop."""
        work = self._work()
        found = _tx(conn, lambda c: nodes.beat(c, member.name, member.instance, work))
        if failing_since is not None:
            self._recovered(failing_since)
        if found.taken is not None:
            held = found.taken
            self.events.emit(catalog.NODE_TAKEN, node=member.name, host=held.host, pid=held.pid)
            self.fail(f"node {member.name}'s name was taken by host {held.host} pid {held.pid}")
            return False
        if found.rejoined is not None:
            self.events.emit(catalog.NODE_REJOINED, node=member.name,
                             silent=round(found.rejoined, 1))  # fmt: skip
        timeout = self.config.queue.node_timeout
        if time.monotonic() < self.grace_until:
            return True
        quiet = nodes.silent(conn, member.name, timeout)
        self.declared &= {(n.name, n.instance) for n in quiet}  # back alive: may die again
        for node in quiet:
            if (node.name, node.instance) not in self.declared:
                self._declare(conn, member, node, timeout)
        return True

    def _declare(self, conn: Connection, member: Membership, node: NodeRow, timeout: float) -> None:
        won = _tx(conn, lambda c: nodes.declare_dead(c, node, timeout))
        released = 0
        if won:
            released = end_dead_leases(
                member.backend, self.events, self.config, node_owner(node.name),
                f"held by dead node {node.name}", f"its node {node.name} died",
            )  # fmt: skip
            if released:
                announce_now(member.backend)  # every node's threads: the work is due now
        silent_for = nodes.store_now(conn) - node.heartbeat_at
        self.events.emit(catalog.NODE_DEAD, node=node.name, host=node.host, pid=node.pid,
                         silent=round(silent_for, 1), timeout=timeout, by=member.name,
                         released=released)  # fmt: skip
        self.declared.add((node.name, node.instance))

    def _work(self) -> list[dict[str, Any]]:
        """This node's threads, each with what it works on (for `ctl status` elsewhere)."""
        try:
            threads = self.work()
        except Exception:  # a summary is a courtesy: never what stops the heart-beat
            return []
        return [
            {
                "process": t.get("process", "single"),
                "thread": t.get("name"),
                "state": t.get("state"),
                "cpu_seconds": t.get("cpu_seconds"),
                "work": t.get("work"),
            }
            for t in threads
        ]
