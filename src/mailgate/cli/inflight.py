"""`mailgate queue hold|delete|bounce` on a message being delivered: cancel, then say how.

The command's transaction has already revoked the leases (queue/revoke.py): the command
has taken effect. Here the running service is asked over its control socket (`cancel`)
to stop those attempts, and the command waits briefly for each attempt's row in the
queue (its outcome is discarded, but what it came to is recorded as an attempt), then
says what became of it, in its reply and in event 4020. If no service answers, or an
attempt does not end within the wait, nothing is undone: the outcome is discarded when
it comes, and a delivery it completes while the recipient is held is recorded as
delivered, so it is never sent again. On a shared PostgreSQL queue the attempts of other
nodes are cancelled too: their node hears the cancel over LISTEN/NOTIFY.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from mailgate.cli.reading import reading
from mailgate.config.schema import Config
from mailgate.control.server import request, socket_path
from mailgate.errors import StoreError
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.observe import catalog
from mailgate.queue.nodes import node_owner
from mailgate.queue.notify import announce_cancel
from mailgate.queue.open import open_backend
from mailgate.queue.revoke import Revoked
from mailgate.service import wiring

CANCEL_WAIT = 5.0  # an attempt told to stop ends within milliseconds; a wedged one is not awaited
GONE_WAIT = 1.0  # no thread works on it any more: its outcome is being recorded, or it died
POLL = 0.05
ASK_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Fate:
    """What became of the attempt in progress on a revoked recipient."""

    revoked: Revoked
    fate: str  # cancelled | delivered | ended | running | orphaned
    reply: str | None
    waited: float

    def text(self, command: str) -> str:
        on = f"an attempt in progress on {self.revoked.thread}"
        match self.fate:
            case "cancelled":
                return f"{on} was cancelled"
            case "delivered":
                return (
                    f"<{self.revoked.address}> was already delivered by {on} ({self.reply}); "
                    "the queue records it delivered"
                )
            case "ended":
                return f"{on} ended ({self.reply}); its outcome was discarded"
            case "running" if command == "hold":
                return (
                    f"{on} did not end within {self.waited:.0f}s; its outcome will be discarded "
                    "(a delivery it still completes is recorded as delivered, never repeated)"
                )
            case "running":
                return (
                    f"{on} did not end within {self.waited:.0f}s; its outcome will be "
                    "discarded, but its destination may still receive the message"
                )
        return f"the lease of {self.revoked.thread} was revoked (no service is running)"


def cancel_attempts(config: Config, revoked: Sequence[Revoked]) -> list[Fate]:
    """Ask the service to stop the attempts on `revoked` (one message), and learn their fate.

    This node's attempts are cancelled over its control socket; other nodes' (on a shared
    queue, their lease owners name them) over the store's channel (queue/notify.py)."""
    if not revoked:
        return []
    queue_id, here = revoked[0].queue_id, node_owner(config.service.node)
    owners = sorted({r.owner for r in revoked})
    local = [o for o in owners if o.startswith(here)]
    found = _ask(config, queue_id, local) if local else []
    told = _tell_other_nodes(config, queue_id, [o for o in owners if not o.startswith(here)])
    if found is None and not told:
        return [Fate(r, "orphaned", None, 0.0) for r in revoked]
    wait = CANCEL_WAIT if found or told else GONE_WAIT
    seen = _wait_for_attempts(config, revoked, wait)
    return [
        Fate(r, "orphaned", None, 0.0)
        if found is None and r.owner.startswith(here)
        else _fate(r, seen.get(r.recipient_id), wait)
        for r in revoked
    ]


def _tell_other_nodes(config: Config, queue_id: str, owners: list[str]) -> bool:
    """Whether a cancel for these other nodes' attempts went out (a NOTIFY). One that
    cannot be sent is said on stderr and in event 4001: the revoked leases still discard
    those attempts' outcomes when they end."""
    if not owners:
        return False
    try:
        backend = open_backend(config.queue, config.data_dir)
    except StoreError as exc:
        return _not_told(config, exc)
    try:
        return announce_cancel(backend, queue_id, owners)
    except StoreError as exc:
        return _not_told(config, exc)
    finally:
        backend.close()


def _not_told(config: Config, exc: StoreError) -> bool:
    click.echo(f"mailgate: other nodes were not told to cancel: {exc}", err=True)
    events = wiring.open_events(config, stderr=False)
    try:
        events.emit(catalog.STORE_ERROR, operation="cancel on other nodes", error=str(exc))
    finally:
        events.close()
    return False


def _ask(config: Config, queue_id: str, owners: list[str]) -> list[dict[str, Any]] | None:
    """The threads that were told to stop (empty: none works on it); None if no service runs."""
    try:
        answer = request(
            socket_path(config.data_dir),
            "cancel",
            {"queue_id": queue_id, "owners": owners},
            timeout=ASK_TIMEOUT,
        )
    except (OSError, ValueError):
        return None
    except RuntimeError:  # the service runs but could not act on it: just wait a little
        return []
    if not isinstance(answer, dict):
        return []
    # From a master: one answer per interchange worker process.
    answers = [answer] if "cancelled" in answer else list(answer.values())
    return [item for a in answers if isinstance(a, dict) for item in a.get("cancelled", [])]


def _wait_for_attempts(
    config: Config, revoked: Sequence[Revoked], wait: float
) -> dict[int, tuple[str, str]]:
    seen: dict[int, tuple[str, str]] = {}
    deadline = time.monotonic() + wait
    with reading(config) as queue:
        if queue is None:
            return seen
        while True:
            for item in revoked:
                if item.recipient_id not in seen:
                    rows = queue.attempts_since(item)
                    if rows:
                        seen[item.recipient_id] = (rows[0][1], rows[0][2])
            if len(seen) == len(revoked) or time.monotonic() >= deadline:
                return seen
            time.sleep(POLL)  # a poll with a deadline: the queue is the only witness


def _fate(revoked: Revoked, attempt: tuple[str, str] | None, wait: float) -> Fate:
    if attempt is None:
        return Fate(revoked, "running", None, wait)
    disposition, reply = attempt
    if disposition == "delivered":
        return Fate(revoked, "delivered", reply, wait)
    if reply == CANCELLED_REPLY:
        return Fate(revoked, "cancelled", reply, wait)
    return Fate(revoked, "ended", reply, wait)


def report(config: Config, fates: Sequence[Fate], command: str) -> None:
    """Event 4020 for each recipient taken from its thread."""
    if not fates:
        return
    events = wiring.open_events(config, stderr=False)
    try:
        for f in fates:
            events.emit(
                catalog.LEASE_REVOKED,
                queue_id=f.revoked.queue_id,
                command=command,
                recipient=f.revoked.address,
                connector=f.revoked.connector,
                thread=f.revoked.thread,
                fate=f.fate,
                fate_text=f.text(command),
                reply=f.reply,
            )
    finally:
        events.close()


def describe(fates: Sequence[Fate], command: str) -> str:
    """The fates, to append to the command's reply ("" if it took nothing from a thread)."""
    return "".join(f"; {f.text(command)}" for f in fates)


def as_json(fates: Sequence[Fate]) -> list[dict[str, Any]]:
    return [
        {
            "recipient": f.revoked.address,
            "connector": f.revoked.connector,
            "thread": f.revoked.thread,
            "fate": f.fate,
            "reply": f.reply,
        }
        for f in fates
    ]


def delivered(fates: Sequence[Fate]) -> int:
    return sum(1 for f in fates if f.fate == "delivered")
