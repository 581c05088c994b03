"""Leases whose holders are gone: given back at start, or ended when a worker died.

A process that takes the data directory lock knows every earlier holder of a lease
is gone. After a clean stop the leases were given back deliberately (a stop that
outlived its deadline left a wedged thread's, which stall detection had its chance
to count): no attempt is counted. After the service died (its PID was still in the
lock file) each lease is an attempt that ended without an outcome, and counts: a
message that crashes the whole service on every attempt is quarantined, not retried
forever (Exchange's poison message queue counts crashes the same way). The master
ends a dead worker's leases the same way. Storage errors reach the caller.
"""

from __future__ import annotations

import time

from mailgate.config.schema import Config
from mailgate.interchange.ended import report_ended
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.backend import Backend
from mailgate.queue.commit import DirectWriter
from mailgate.queue.effects import Effects
from mailgate.queue.lock import DataDirLock
from mailgate.queue.nodes import node_owner
from mailgate.queue.ops import release_leases
from mailgate.service import wiring


def release_leases_at_start(
    backend: Backend, events: EventLog, config: Config, lock: DataDirLock
) -> int:
    """Give back this node's leases (only its own: in a shared store the others' are
    held by live nodes; a dead node's are released by the live ones, queue/nodes.py)."""
    mine = node_owner(config.service.node)
    if lock.previous_pid is None:
        return release_all_leases(backend, events, mine)
    return end_dead_leases(
        backend,
        events,
        config,
        mine,
        f"held when the service (pid {lock.previous_pid}) ended without stopping",
        "the service ended without stopping",
    )


def end_dead_leases(
    backend: Backend,
    events: EventLog,
    config: Config,
    owner_prefix: str | None,
    why: str,
    reason: str,
) -> int:
    """End the leases of processes that died (one worker's, by owner prefix, or all):
    each is an attempt without an outcome, counted; see queue/leases.py."""
    writer = DirectWriter(backend)
    try:
        store = wiring.queue_store(config, writer, backend)
        store.use_reports(wiring.bounce_generator(config))
        # Reports' events; no wake-up: only interchange threads hold leases, and those of a
        # dead process claim the requeued work when they start again.
        store.effects = Effects(events=events)
        ended = store.end_leases(reason, owner_prefix).result()
    finally:
        writer.close()
    report_ended(events, ended, why)
    return ended.count


def release_all_leases(
    backend: Backend, events: EventLog, owner_prefix: str | None = None, why: str = ""
) -> int:
    """Release leases held by processes now gone, without counting an attempt."""
    writer = DirectWriter(backend)
    try:
        released = writer.submit(
            "release", lambda c: release_leases(c, time.time(), owner_prefix)
        ).result()
    finally:
        writer.close()
    if released:
        events.emit(
            catalog.LEASES_RELEASED,
            count=released,
            why=why or "held when the service last ended",
        )
    return int(released)
