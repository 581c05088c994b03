"""connectors.limits: per-destination limits that a connector's threads share.

A destination is what a connector connects to: a smarthost's host:port, an LMTP server, an
MX host's name. `Limits` says how many connections may be open to one destination at once,
how many messages one connection carries before it is closed (QUIT) and a new one opened,
and a rate (messages per second per destination: a token bucket holding `burst` tokens);
0 means no limit. `Destinations` keeps the counts. A thread `acquire`s a slot before it
connects and keeps it, with its open connection, between messages (`pause`, `resume`); a
thread that needs the destination takes over a slot another thread left idle, connection
and all, before it opens one more, and at the limit it waits (at most `wait` seconds) for
one: idle connections never starve a busy thread. `admit` takes a token, or says how long
until one is due. Thread-safe: one lock, held for counts and lists only, never across I/O;
whoever holds a slot is the only thread using its connection.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limits:
    connections: int = 0  # open at once per destination
    messages_per_connection: int = 0
    rate: float = 0.0  # messages per second per destination
    burst: int = 1  # messages sent at once after a quiet spell, within the rate
    wait: float = 10.0  # seconds a thread waits for a connection or a token before deferring

    def __post_init__(self) -> None:
        if min(self.connections, self.messages_per_connection, self.rate, self.wait) < 0:
            raise ValueError("limits cannot be negative")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; time comes from the caller."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one is (none taken)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.burst


class _State(enum.Enum):
    BUSY = "busy"  # its holder is using it
    IDLE = "idle"  # its holder keeps it open between messages; another thread may take it
    TAKEN = "taken"  # another thread took it over (its connection is that thread's now)
    RELEASED = "released"


class Slot(Generic[T]):
    """One connection's place in a destination's count, and the connection (None until
    its holder has connected)."""

    __slots__ = ("_state", "conn", "destination", "messages")

    def __init__(self, destination: str, conn: T | None = None, messages: int = 0) -> None:
        self.destination = destination
        self.conn = conn
        self.messages = messages  # carried by this connection so far
        self._state = _State.BUSY


@dataclass(frozen=True, slots=True)
class DestinationStatistics:
    destination: str
    open: int  # slots held: connections open or being opened
    idle: int  # of which kept open between messages
    waiting: int  # threads waiting for a slot


@dataclass(slots=True)
class _Destination:
    open: int = 0
    idle: list[Slot[object]] = field(default_factory=list)  # most recently paused last
    waiting: int = 0
    bucket: TokenBucket | None = None


class Destinations(Generic[T]):
    """The shared counts of one connector's destinations (see the module doc)."""

    def __init__(
        self, limits: Limits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or Limits()
        self._clock = clock  # for the rate only: waits for a slot use real time
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._dests: dict[str, _Destination] = {}

    def acquire(self, destination: str, timeout: float | None = None) -> Slot[T] | None:
        """A slot to use now: one another thread left idle (with its open connection), or a
        new one (`conn` None: connect and set it); None if the destination stayed at its
        connection limit for `timeout` seconds (default: the limits' `wait`)."""
        limit = self.limits.connections
        deadline = time.monotonic() + (self.limits.wait if timeout is None else timeout)
        with self._lock:
            dest = self._dests.setdefault(destination, _Destination())
            while True:
                if dest.idle:
                    old = dest.idle.pop()  # the freshest: the least likely to have timed out
                    old._state = _State.TAKEN
                    slot: Slot[T] = Slot(destination, old.conn, old.messages)  # type: ignore[arg-type]
                    old.conn = None
                    return slot
                if not limit or dest.open < limit:
                    dest.open += 1
                    return Slot(destination)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._forget_if_unused(destination, dest)
                    return None
                dest.waiting += 1
                try:
                    self._freed.wait(remaining)
                finally:
                    dest.waiting -= 1

    def resume(self, slot: Slot[T]) -> bool:
        """Use a slot this thread holds again; False if another thread took it over (forget
        it then, without touching its connection, which is no longer this thread's)."""
        with self._lock:
            if slot._state is _State.IDLE:
                self._dests[slot.destination].idle.remove(slot)  # type: ignore[arg-type]
                slot._state = _State.BUSY
            return slot._state is _State.BUSY

    def pause(self, slot: Slot[T]) -> None:
        """Done with the slot for now: its connection stays open, and this thread keeps it
        unless another thread needs the destination first."""
        with self._lock:
            if slot._state is not _State.BUSY:
                return
            slot._state = _State.IDLE
            self._dests[slot.destination].idle.append(slot)  # type: ignore[arg-type]
            self._freed.notify()

    def release(self, slot: Slot[T]) -> None:
        """The slot's connection is closed (or was never opened): its place is free."""
        with self._lock:
            if slot._state not in (_State.BUSY, _State.IDLE):
                return  # taken over: its place went with it
            dest = self._dests[slot.destination]
            if slot._state is _State.IDLE:
                dest.idle.remove(slot)  # type: ignore[arg-type]
            slot._state = _State.RELEASED
            slot.conn = None
            dest.open -= 1
            self._freed.notify()
            self._forget_if_unused(slot.destination, dest)

    def exhausted(self, slot: Slot[T]) -> bool:
        """Whether the slot's connection has carried its `messages_per_connection`."""
        most = self.limits.messages_per_connection
        return bool(most) and slot.messages >= most

    def admit(self, destination: str) -> float:
        """Take a token of the destination's rate: 0.0 if sending may start now, else the
        seconds to wait before asking again."""
        if not self.limits.rate:
            return 0.0
        now = self._clock()
        with self._lock:
            dest = self._dests.setdefault(destination, _Destination())
            if dest.bucket is None:
                dest.bucket = TokenBucket(self.limits.rate, self.limits.burst, now)
            return dest.bucket.take(now)

    def statistics(self) -> list[DestinationStatistics]:
        with self._lock:
            return [
                DestinationStatistics(name, d.open, len(d.idle), d.waiting)
                for name, d in sorted(self._dests.items())
                if d.open or d.waiting
            ]

    def _forget_if_unused(self, destination: str, dest: _Destination) -> None:
        """Drop a destination nothing holds or waits for (an MX connector meets many), unless
        its bucket is still refilling: forgetting it would hand out a fresh burst."""
        if dest.open or dest.waiting:
            return
        if dest.bucket is None or dest.bucket.full(self._clock()):
            del self._dests[destination]
