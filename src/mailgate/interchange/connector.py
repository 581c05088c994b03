"""What an interchange thread needs of a connector.

A connector opens one session per thread, inside that thread, so every thread
builds its own context (connections, descriptors, counters) on every start and
restart. `deliver` takes the claimed recipients of one message (so a connector
can send them in one transaction) and returns one Result per recipient, in
order. It may instead raise TemporaryFailure or PermanentFailure for all of
them; anything else it raises is an internal error. `flush` makes the batch's
deliveries durable before their outcomes are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mailgate.model import Claim, Disposition


@dataclass(frozen=True, slots=True)
class Result:
    disposition: Disposition
    reply: str
    remote_mta: str | None = None


class ConnectorSession(Protocol):
    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Connector(Protocol):
    name: str

    def open(self) -> ConnectorSession: ...
