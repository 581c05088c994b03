"""What an interchange thread needs of a connector.

A connector opens one session per thread, inside that thread, so every thread
builds its own context (connections, descriptors, counters) on every start and
restart. `deliver` returns the success reply or raises TemporaryFailure /
PermanentFailure; anything else it raises is an internal error. `flush` makes
the batch's deliveries durable before their outcomes are recorded.
"""

from __future__ import annotations

from typing import Protocol

from mailgate.model import Claim


class ConnectorSession(Protocol):
    def deliver(self, claim: Claim, body: bytes) -> str: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Connector(Protocol):
    name: str

    def open(self) -> ConnectorSession: ...
