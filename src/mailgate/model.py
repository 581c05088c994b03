"""Plain records that cross stage boundaries: envelopes, claims, outcomes, and the
queue's recipient states with their groupings (declared once: queue SQL, metrics,
the control surface and the CLI all use these).

Nothing here does I/O; every record is immutable so it can be handed between
threads (the SMTP loop, the commit thread, interchange threads) without locks.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass


class RecipientState(enum.StrEnum):
    """Recipient states of the queue (docs/architecture.md, "How a message moves")."""

    QUEUED = "queued"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HELD = "held"
    QUARANTINED = "quarantined"
    DELIVERED = "delivered"
    BOUNCED = "bounced"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES: tuple[RecipientState, ...] = (RecipientState.DELIVERED, RecipientState.BOUNCED)
"""Nothing more will happen to these recipients; a message whose recipients are all final
is finished (its body dropped, its report queued)."""
OPEN_STATES: tuple[RecipientState, ...] = tuple(s for s in RecipientState if s not in FINAL_STATES)
"""Every other state: queued, active, deferred, held, quarantined (in that order)."""
WAITING_STATES: tuple[RecipientState, ...] = (RecipientState.QUEUED, RecipientState.DEFERRED)
"""Waiting for an attempt: claimable once due (the queue's due index holds exactly these)."""


class Disposition(enum.StrEnum):
    """The outcome of one delivery attempt for one recipient."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    INTERNAL_ERROR = "internal-error"


def new_queue_id(now: float | None = None) -> str:
    """A queue id sortable by arrival time: 13 hex digits of microseconds + 6 random."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013X}{secrets.token_hex(3).upper()}"


class MessageKind(enum.StrEnum):
    """Ordinary mail, a bounce (null sender), or a bounce of a bounce sent to the postmaster."""

    NORMAL = "normal"
    BOUNCE = "bounce"
    DOUBLE_BOUNCE = "double-bounce"


@dataclass(frozen=True, slots=True)
class NewRecipient:
    """A recipient to queue; one with `failed_reply` is queued already bounced (with that reply)."""

    address: str
    connector: str
    failed_reply: str | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message accepted by a receiver, ready to be made durable."""

    queue_id: str
    sender: str
    recipients: tuple[NewRecipient, ...]
    body: bytes
    received_at: float
    client: str
    header_message_id: str | None = None
    smtputf8: bool = False
    kind: MessageKind = MessageKind.NORMAL
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """One recipient leased to an interchange thread, with its message's envelope."""

    recipient_id: int
    queue_id: str
    address: str
    connector: str
    sender: str
    received_at: float
    attempts: int
    internal_failures: int
    redelivery: bool
    smtputf8: bool
    kind: MessageKind = MessageKind.NORMAL


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a claimed recipient; recorded by the queue in one transaction."""

    claim: Claim
    disposition: Disposition
    reply: str
    started_at: float
    finished_at: float
    remote_mta: str | None = None
