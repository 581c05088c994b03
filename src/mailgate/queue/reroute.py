"""Recipients waiting for a connector the configuration no longer has (Q243701).

Mail queued for a connector that a later configuration dropped (a restart without
`--smarthost`, a reload whose routes no longer name it) would never be claimed and
never bounce. The scheduler runs `reroute_vanished` every tick, so right after a
start or a reload: each waiting (queued or deferred) recipient of such a connector
is routed again by the current rules and moved, due at once, or bounced (554 5.4.4)
with its report when no rule routes it. Held and quarantined recipients wait for the
administrator; once released they are waiting, and handled. Vanished connectors are
found with one index seek per distinct connector that has waiting mail; each call
moves a bounded number of recipients.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from mailgate.model import RecipientState
from mailgate.queue import states
from mailgate.queue.backend import Connection
from mailgate.queue.leases import Ended
from mailgate.queue.ops import OnDone, finish_or_keep

Route = Callable[[str], str | None]
"""The connector the current rules give an address, or None."""


@dataclass(frozen=True, slots=True)
class Rerouted:
    """What was done with waiting recipients of one vanished connector."""

    connector: str
    moved: tuple[tuple[str, int], ...]  # (new connector, recipients moved there)
    bounced: tuple[Ended, ...]
    done: tuple[tuple[str, Any], ...]  # (queue id, on_done result) of finished messages

    @property
    def rerouted(self) -> int:
        return sum(count for _, count in self.moved)


def reroute_vanished(
    conn: Connection,
    known: Collection[str],
    route: Route,
    now: float,
    on_done: OnDone | None = None,
    limit: int = 500,
) -> list[Rerouted]:
    """Re-route or bounce up to `limit` waiting recipients of connectors not in `known`."""
    results = []
    for connector in _waiting_connectors(conn):
        if connector in known:
            continue
        rows = conn.execute(
            "SELECT id, message_id, address, internal_failures FROM recipients "
            f"WHERE connector = ? AND state {states.WAITING} ORDER BY due_at LIMIT ?",
            (connector, limit),
        ).fetchall()
        results.append(_reroute(conn, connector, rows, known, route, now, on_done))
        limit -= len(rows)
        if limit <= 0:
            break
    return results


def _waiting_connectors(conn: Connection) -> Iterator[str]:
    """Each connector with waiting recipients, in order: a seek per connector on the
    index of due work, not a scan of the recipients."""
    row = conn.execute(
        f"SELECT MIN(connector) FROM recipients WHERE state {states.WAITING}"
    ).fetchone()
    while row is not None and row[0] is not None:
        yield str(row[0])
        row = conn.execute(
            f"SELECT MIN(connector) FROM recipients WHERE state {states.WAITING} AND connector > ?",
            (row[0],),
        ).fetchone()


def _reroute(
    conn: Connection,
    connector: str,
    rows: list[Any],
    known: Collection[str],
    route: Route,
    now: float,
    on_done: OnDone | None,
) -> Rerouted:
    moved: dict[str, int] = {}
    bounced: list[Ended] = []
    for rid, queue_id, address, failures in rows:
        target = route(address)
        if target is not None and target in known:
            conn.execute(
                "UPDATE recipients SET connector = ?, due_at = ?, updated_at = ? WHERE id = ?",
                (target, now, now, rid),
            )
            moved[target] = moved.get(target, 0) + 1
            continue
        reply = f"554 5.4.4 <{address}>: no route: connector {connector} is no longer configured"
        conn.execute(
            "UPDATE recipients SET state = 'bounced', last_reply = ?, updated_at = ? WHERE id = ?",
            (reply, now, rid),
        )
        bounced.append(
            Ended(queue_id, address, connector, RecipientState.BOUNCED, int(failures), reply)
        )
    done = []
    for queue_id in dict.fromkeys(b.queue_id for b in bounced):
        finished, extra = finish_or_keep(conn, queue_id, now, on_done)
        if finished or extra is not None:
            done.append((queue_id, extra))
    return Rerouted(connector, tuple(sorted(moved.items())), tuple(bounced), tuple(done))
