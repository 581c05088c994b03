"""connectors.smtp_session: an interchange thread's SMTP or LMTP client, whatever it connects to.

`ClientSession` keeps what another thread needs to stop an attempt: the supervisor's
`abort` (a stalled thread: the connection in use is broken, and the attempt says so) and
an administrator's `cancel` (the connection is broken, unless the message is being
handed over, after the server said 354, where breaking it could get it delivered twice).
It holds the destination limits (connectors.limits) and defers, 451 4.4.5, when they keep
it waiting past their `wait` (event 2488). `RelaySession` delivers to one destination (a
smarthost, an LMTP server): its connection stays open between messages, is reset (RSET)
before reuse and replaced once, transparently, when the server dropped it while idle;
all recipients of a message go in one transaction. Connection, protocol and TLS errors
are temporary and mark the destination down for `down_for` seconds (DestinationHealth),
during which attempts defer at once instead of hammering it.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mailgate.connectors.client import (
    ClientSettings,
    ConnectionLost,
    Reply,
    error_text,
    mail_options,
    open_client,
    quit_and_close,
    rset,
    send_message,
)
from mailgate.connectors.limits import Destinations, Slot
from mailgate.connectors.lines import LIMIT, break_long_lines
from mailgate.errors import TemporaryFailure
from mailgate.interchange.connector import Result
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog
from mailgate.observe.events import EventLog

Connections = Destinations[smtplib.SMTP]


class DestinationHealth:
    """Shared by a connector's threads: is the destination known to be down right now?"""

    def __init__(self, down_for: float) -> None:
        self._lock = threading.Lock()
        self._down_for = down_for
        self._down_until = 0.0
        self._last_error = ""
        self._down = False
        self._cleared = False  # an administrator cleared the marking: report a failure anew

    def down_error(self) -> str | None:
        with self._lock:
            if self._down and time.monotonic() < self._down_until:
                return self._last_error
            return None

    def failed(self, error: str) -> bool:
        """Record a connection failure; True if this marks the destination down (newly)."""
        with self._lock:
            newly = not self._down or self._cleared
            self._down, self._last_error, self._cleared = True, error, False
            self._down_until = time.monotonic() + self._down_for
            return newly

    def succeeded(self) -> bool:
        """Record a working connection; True if the destination was down until now."""
        with self._lock:
            was, self._down, self._cleared = self._down, False, False
            return was

    def clear(self) -> str | None:
        """Forget a down marking (an administrator wants delivery now); the error that had
        marked the destination down, or None if it was not marked down."""
        with self._lock:
            if not self._down or time.monotonic() >= self._down_until:
                return None
            self._down_until, self._cleared = 0.0, True
            return self._last_error


class ClientSession:
    """The attempt bookkeeping of one thread's client (see the module doc)."""

    BROKEN = "its connection was broken"  # what `cancel` says it did, per connector

    def __init__(self, name: str, events: EventLog, destinations: Connections) -> None:
        self.connector_name = name
        self.events = events
        self.destinations = destinations
        # Set from other threads (the supervisor's, the control thread's): the message being
        # delivered, since when, whether it is being handed over, whether the supervisor
        # aborted the attempt, and which message an administrator cancelled.
        self._lock = threading.Lock()  # orders `cancel` against the hand-over; no I/O
        self._current: str | None = None
        self._started = 0.0
        self._handing_over = False
        self._stall_aborted = False
        self._cancelled: str | None = None
        self._done: str | None = None
        self._active: smtplib.SMTP | None = None  # the connection in use or being opened
        self._woken = threading.Event()  # ends a wait for a destination's rate

    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
        queue_id = claims[0].queue_id
        with self._lock:
            if self._cancelled != queue_id:
                self._cancelled = None  # a late cancel for a message delivered before
            self._current, self._started, self._stall_aborted = queue_id, time.monotonic(), False
            self._woken.clear()
        try:
            return self._deliver(claims, body, queue_id)
        finally:
            with self._lock:
                self._current, self._done, self._handing_over = None, queue_id, False
                self._active = None

    def _deliver(self, claims: Sequence[Claim], body: bytes, queue_id: str) -> list[Result]:
        raise NotImplementedError

    # --- being stopped from another thread -------------------------------------------------------
    def abort(self) -> None:
        """Break a blocked send or receive (called from the supervisor's thread on a stall)."""
        self._stall_aborted = True
        self._woken.set()
        self._shutdown()

    def cancel(self, queue_id: str) -> str:
        """Stop the attempt on `queue_id` (called from the control thread); how it stops."""
        with self._lock:
            if self._current == queue_id and self._handing_over:
                return "the message is being handed over (DATA): left to finish"
            if self._current != queue_id and self._done == queue_id:
                return "already attempted; its outcome is being recorded"
            self._cancelled = queue_id
            if self._current != queue_id:
                return "not started yet: skipped"
        self._woken.set()
        self._shutdown()
        return self.BROKEN

    def _check_cancelled(self, queue_id: str) -> None:
        """An administrator's command took this message: stop, without marking anything down."""
        if self._cancelled == queue_id:
            raise TemporaryFailure(CANCELLED_REPLY)

    def _hand_over(self, queue_id: str) -> None:
        """The server is ready for the message: from here on, a cancel leaves it to finish."""
        with self._lock:
            self._check_cancelled(queue_id)
            self._handing_over = True

    def _activate(self, conn: smtplib.SMTP | None) -> None:
        with self._lock:
            self._active = conn

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        """Around the use of a connection: `abort` and `cancel` break only what is in use."""
        try:
            yield
        finally:
            self._activate(None)

    def _shutdown(self) -> None:
        with self._lock:  # a socket shutdown returns at once: no I/O waits under the lock
            sock = getattr(self._active, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _aborted_error(self, error: str) -> str:
        """`error`, said to be our doing when the supervisor broke the connection."""
        if not self._stall_aborted:
            return error
        waited = time.monotonic() - self._started
        return (
            f"mailgate aborted the stalled connection after {waited:.0f}s without "
            f"progress ({error})"
        )

    # --- limits ----------------------------------------------------------------------------------
    def _acquire(self, destination: str, queue_id: str) -> Slot[smtplib.SMTP]:
        slot = self.destinations.acquire(destination)
        if slot is None:
            limits = self.destinations.limits
            self._limited(queue_id, destination, f"{limits.connections} connection(s) open")
        assert slot is not None
        return slot

    def _wait_for_rate(self, destination: str, queue_id: str) -> None:
        limits = self.destinations.limits
        deadline = time.monotonic() + limits.wait
        while (delay := self.destinations.admit(destination)) > 0:
            if delay > deadline - time.monotonic() or self._stall_aborted:
                self._limited(queue_id, destination, f"{limits.rate:g} message(s) a second")
            self._woken.wait(delay)
            self._check_cancelled(queue_id)

    def _limited(self, queue_id: str, destination: str, limit: str) -> None:
        self.events.emit(
            catalog.DESTINATION_LIMITED,
            queue_id=queue_id, connector=self.connector_name, destination=destination,
            limit=limit, wait=self.destinations.limits.wait,
        )  # fmt: skip
        raise TemporaryFailure(f"451 4.4.5 {destination}: limit of {limit} reached; try later")

    # --- what goes on the wire -------------------------------------------------------------------
    def _sendable(self, claim: Claim, body: bytes, peer: str) -> bytes:
        """`body` with lines over 998 octets broken (connectors.lines), before SIZE is taken."""
        sendable = break_long_lines(body)
        if sendable is not body:
            self.events.emit(catalog.LINES_BROKEN, queue_id=claim.queue_id, limit=LIMIT, host=peer)
        return sendable

    def _send(
        self,
        conn: smtplib.SMTP,
        claims: Sequence[Claim],
        body: bytes,
        *,
        lmtp: bool,
        remote: str,
        kind: str,
        chunking: bool = True,
    ) -> list[Result]:
        """One transaction on `conn`: one result per claim (see connectors.client)."""
        first = claims[0]
        body = self._sendable(first, body, remote)
        options = mail_options(conn, body, first.smtputf8)
        if options is None:
            refused = f"554 5.6.7 SMTPUTF8 is required but the {kind} does not offer it"
            return [Result(Disposition.FAILED, refused, remote)] * len(claims)
        replies = send_message(
            conn, first.sender, [c.address for c in claims], body, options,
            lmtp=lmtp, chunking=chunking,
            before_body=lambda: self._hand_over(first.queue_id),
        )  # fmt: skip
        return results(replies, remote)


def results(replies: Sequence[Reply], remote: str) -> list[Result]:
    return [Result(r.disposition, str(r), remote) for r in replies]


@dataclass(frozen=True, slots=True)
class Peer:
    """The one destination of a relay session, and how replies and events name it."""

    kind: str  # "smarthost", "LMTP server"
    address: str  # a host, or (LMTP) a Unix socket path
    port: int
    server_name: str  # the TLS name to verify
    down_for: float = 60.0

    @property
    def name(self) -> str:
        return self.address if self.address.startswith("/") else f"{self.address}:{self.port}"


class RelaySession(ClientSession):
    """One thread's connection to one destination, reused (see the module doc). A
    connector's session class says which events report the destination down and back."""

    def __init__(
        self,
        name: str,
        peer: Peer,
        settings: ClientSettings,
        health: DestinationHealth,
        events: EventLog,
        destinations: Connections,
    ) -> None:
        super().__init__(name, events, destinations)
        self.peer, self.settings, self.health = peer, settings, health
        self._slot: Slot[smtplib.SMTP] | None = None
        self.connections = 0  # opened by this session

    @property
    def conn(self) -> smtplib.SMTP | None:
        """The connection this session keeps open, if any."""
        return self._slot.conn if self._slot is not None else None

    def _report_failed(self, error: str) -> None:
        raise NotImplementedError

    def _report_recovered(self) -> None:
        raise NotImplementedError

    def _deliver(self, claims: Sequence[Claim], body: bytes, queue_id: str) -> list[Result]:
        peer = self.peer
        down = self.health.down_error()
        if down is not None:
            raise TemporaryFailure(f"451 4.4.1 {peer.kind} {peer.name} is down: {down}")
        self._wait_for_rate(peer.name, queue_id)
        for attempt in (1, 2):
            self._check_cancelled(queue_id)
            reused = False
            try:
                with self._using():
                    conn, reused = self._connection(queue_id)
                    sent = self._send(
                        conn, claims, body, lmtp=self.settings.lmtp, remote=peer.address,
                        kind=peer.kind, chunking=self.settings.chunking,
                    )  # fmt: skip
                self._sent()
                return sent
            except ConnectionLost as exc:
                self._drop()
                self._check_cancelled(queue_id)
                retry = not exc.after_data and not self._stall_aborted
                if reused and attempt == 1 and retry:
                    continue  # an idle connection the server closed: one fresh try
                failure = self._unreachable(exc)
                if not exc.replies:
                    raise failure from exc
                # Replies already had stand; the others' fate is unknown: deferred.
                unknown = Result(Disposition.DEFERRED, failure.reply, peer.address)
                return [
                    unknown if r is None else Result(r.disposition, str(r), peer.address)
                    for r in exc.replies
                ]
            except TemporaryFailure:
                self._drop()  # cancelled or limited: the connection may be mid-transaction
                raise
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                self._check_cancelled(queue_id)
                raise self._unreachable(exc) from exc
        raise AssertionError("unreachable")

    def _connection(self, queue_id: str) -> tuple[smtplib.SMTP, bool]:
        """The session's open connection, reset; one another thread left idle; or a new one.
        Also whether it was reused."""
        while True:
            slot = self._slot
            if slot is None or not self.destinations.resume(slot):
                slot = self._slot = self._acquire(self.peer.name, queue_id)
            if slot.conn is None:
                break
            self._activate(slot.conn)
            if rset(slot.conn):
                return slot.conn, True
            self._drop()  # dropped while idle: close it, and look again
        peer = self.peer
        conn = open_client(self.settings, peer.address, peer.port, peer.server_name, self._activate)
        slot.conn = conn
        self.connections += 1
        if self.health.succeeded():
            self._report_recovered()
        return conn, False

    def _sent(self) -> None:
        """A transaction ended: keep the connection for the next message, or end it if it
        has carried its messages_per_connection."""
        slot = self._slot
        assert slot is not None and slot.conn is not None
        slot.messages += 1
        if self.destinations.exhausted(slot):
            self._slot = None
            quit_and_close(slot.conn)
            self.destinations.release(slot)
        else:
            self.destinations.pause(slot)

    def _unreachable(self, exc: BaseException) -> TemporaryFailure:
        error = self._aborted_error(error_text(exc))
        if self.health.failed(error):
            self._report_failed(error)
        return TemporaryFailure(f"451 4.4.1 {self.peer.kind} {self.peer.name}: {error}")

    def _drop(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        if slot.conn is not None and self.destinations.resume(slot):  # still this thread's
            with contextlib.suppress(Exception):
                slot.conn.close()
        self.destinations.release(slot)

    def flush(self) -> None:
        """Nothing to sync: the server's 250 to the message is its promise."""

    def close(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None or not self.destinations.resume(slot):
            return
        if slot.conn is not None:
            quit_and_close(slot.conn)
        self.destinations.release(slot)
