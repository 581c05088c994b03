"""connectors.smtp: relay to a smarthost over SMTP, reusing connections.

Each interchange thread keeps its own connection open across messages (a later
message does not pay a new handshake); a connection the server dropped while
idle is replaced once, transparently, before anything of the message was sent.
All recipients of one message go in one transaction. Replies map per
recipient: 2xx delivered, 4xx deferred, 5xx failed; the remote reply is kept
verbatim. Connection and TLS errors are temporary, and they mark the smarthost
down for `down_for` seconds, during which new attempts are deferred at once
rather than hammering a dead host (events 2460/2461); an administrator's "try
now" (`queue retry`, `ctl wake`) clears that marking (event 2462). A connection
the supervisor aborted because its thread stalled says so in event 2460. An
administrator's command on a message being delivered cancels its attempt
(`cancel`): the connection is broken, unless the message is being handed over
(DATA), where breaking it could make the smarthost deliver it twice.

Security: STARTTLS none/opportunistic/required with certificate verification
(and an optional CA file); AUTH only with a password read from a file, never
logged; EHLO uses the configured name (no DNS lookup of our own name).
Lines over 998 octets are broken with CRLF SPACE before DATA, as Postfix does.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailgate.connectors.lines import LIMIT, break_long_lines
from mailgate.errors import TemporaryFailure
from mailgate.interchange.connector import Result
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog
from mailgate.observe.events import EventLog


@dataclass(frozen=True, slots=True)
class SmarthostTarget:
    host: str
    port: int
    helo: str
    starttls: str = "opportunistic"
    verify: bool = True
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    timeout: float = 60.0
    down_for: float = 60.0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class DestinationHealth:
    """Shared by a connector's threads: is the smarthost known to be down right now?"""

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
        """Record a connection failure; True if this marks the host down (newly)."""
        with self._lock:
            newly = not self._down or self._cleared
            self._down, self._last_error, self._cleared = True, error, False
            self._down_until = time.monotonic() + self._down_for
            return newly

    def succeeded(self) -> bool:
        """Record a working connection; True if the host was down until now."""
        with self._lock:
            was, self._down, self._cleared = self._down, False, False
            return was

    def clear(self) -> str | None:
        """Forget a down marking (an administrator wants delivery now); the error that had
        marked the host down, or None if it was not marked down."""
        with self._lock:
            if not self._down or time.monotonic() >= self._down_until:
                return None
            self._down_until, self._cleared = 0.0, True
            return self._last_error


def _disposition(code: int) -> Disposition:
    if 200 <= code < 300:
        return Disposition.DELIVERED
    if 500 <= code < 600:
        return Disposition.FAILED
    return Disposition.DEFERRED


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}".strip()


class SmarthostConnector:
    name = "smarthost"

    def __init__(self, target: SmarthostTarget, events: EventLog) -> None:
        self.target = target
        self.events = events
        self.health = DestinationHealth(target.down_for)

    def open(self) -> SmarthostSession:
        return SmarthostSession(self)

    def clear_down(self, by: str) -> bool:
        """Try the smarthost at once again, if it was marked down; True if it was."""
        error = self.health.clear()
        if error is None:
            return False
        t = self.target
        self.events.emit(
            catalog.SMARTHOST_DOWN_CLEARED,
            connector=self.name, host=t.host, port=t.port, by=by, error=error,
        )  # fmt: skip
        return True


class SmarthostSession:
    """One thread's connection to the smarthost, opened lazily and reused."""

    def __init__(self, connector: SmarthostConnector) -> None:
        self.c = connector
        self.t = connector.target
        self.conn: smtplib.SMTP | None = None
        self._connecting: smtplib.SMTP | None = None
        self.connections = 0
        # Set from other threads (the supervisor's, the control thread's): the message being
        # delivered, since when, whether it is being handed over (DATA), whether the
        # supervisor aborted the attempt, and which message an administrator cancelled.
        self._lock = threading.Lock()  # orders `cancel` against the start of DATA; no I/O
        self._current: str | None = None
        self._started = 0.0
        self._handing_over = False
        self._stall_aborted = False
        self._cancelled: str | None = None
        self._done: str | None = None

    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
        queue_id = claims[0].queue_id
        with self._lock:
            if self._cancelled != queue_id:
                self._cancelled = None  # a late cancel for a message delivered before
            self._current, self._started, self._stall_aborted = queue_id, time.monotonic(), False
        try:
            return self._deliver(claims, body, queue_id)
        finally:
            with self._lock:
                self._current, self._done, self._handing_over = None, queue_id, False

    def _deliver(self, claims: Sequence[Claim], body: bytes, queue_id: str) -> list[Result]:
        down = self.c.health.down_error()
        if down is not None:
            raise TemporaryFailure(f"451 4.4.1 smarthost {self.t.name} is down: {down}")
        for attempt in (1, 2):
            self._check_cancelled(queue_id)
            reused = self.conn is not None
            try:
                conn = self._connection()
                return self._transaction(conn, claims, body, queue_id)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                self._check_cancelled(queue_id)
                retry = not getattr(exc, "after_data", False) and not self._stall_aborted
                if reused and attempt == 1 and retry:
                    continue  # an idle connection the server closed: one fresh try
                raise self._unreachable(exc) from exc
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                self._check_cancelled(queue_id)
                raise self._unreachable(exc) from exc
        raise AssertionError("unreachable")

    def _check_cancelled(self, queue_id: str) -> None:
        """An administrator's command took this message: stop, without marking the host down."""
        if self._cancelled == queue_id:
            raise TemporaryFailure(CANCELLED_REPLY)

    def _unreachable(self, exc: BaseException) -> TemporaryFailure:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._stall_aborted:  # the connection did not fail by itself: we broke it
            waited = time.monotonic() - self._started
            error = (
                f"mailgate aborted the stalled connection after {waited:.0f}s without "
                f"progress ({error})"
            )
        if self.c.health.failed(error):
            self.c.events.emit(
                catalog.SMARTHOST_FAILED,
                host=self.t.host,
                port=self.t.port,
                error=error,
                down_for=self.t.down_for,
            )
        return TemporaryFailure(f"451 4.4.1 smarthost {self.t.name}: {error}")

    def _connection(self) -> smtplib.SMTP:
        if self.conn is not None:
            return self.conn
        t = self.t
        conn = smtplib.SMTP(local_hostname=t.helo, timeout=t.timeout)
        # smtplib takes the TLS server name from the constructor's host, which would also
        # connect at once; set it here so abort() can break a hung greeting too.
        conn._host = t.host  # type: ignore[attr-defined]
        self._connecting = conn
        try:
            conn.connect(t.host, t.port)
            conn.ehlo(t.helo)
            self._secure(conn)
            if t.username:
                conn.login(t.username, self._password())
        except BaseException:
            conn.close()
            raise
        finally:
            self._connecting = None
        self.conn = conn
        self.connections += 1
        if self.c.health.succeeded():
            self.c.events.emit(catalog.SMARTHOST_RECOVERED, host=t.host, port=t.port)
        return conn

    def _secure(self, conn: smtplib.SMTP) -> None:
        t = self.t
        if t.starttls == "none":
            return
        if not conn.has_extn("starttls"):
            if t.starttls == "required":
                raise smtplib.SMTPNotSupportedError("STARTTLS required but not offered")
            return
        conn.starttls(context=self._tls_context())
        conn.ehlo(t.helo)

    def _tls_context(self) -> ssl.SSLContext:
        if self.t.verify:
            return ssl.create_default_context(cafile=self.t.ca_file or None)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _password(self) -> str:
        try:
            return Path(self.t.password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise smtplib.SMTPException(f"cannot read password file: {exc.strerror}") from None

    def _transaction(
        self, conn: smtplib.SMTP, claims: Sequence[Claim], body: bytes, queue_id: str
    ) -> list[Result]:
        remote = self.t.host
        message: bytes | str
        body = self._sendable(claims[0], body)
        options = self._mail_options(conn, claims[0], body)
        if isinstance(options, Result):
            return [options] * len(claims)
        code, message = conn.mail(claims[0].sender, options)
        if code != 250:
            conn.rset()
            return [Result(_disposition(code), _reply(code, message), remote)] * len(claims)
        results: list[Result | None] = [None] * len(claims)
        accepted = []
        for index, claim in enumerate(claims):
            code, message = conn.rcpt(claim.address)
            if code in (250, 251):
                accepted.append(index)
            else:
                results[index] = Result(_disposition(code), _reply(code, message), remote)
        if not accepted:
            conn.rset()
            return [r for r in results if r is not None]
        with self._lock:  # from here on, a cancel no longer breaks the connection
            self._check_cancelled(queue_id)
            self._handing_over = True
        try:
            code, message = conn.data(body)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            code, message = exc.smtp_code, exc.smtp_error
        except smtplib.SMTPServerDisconnected as exc:
            exc.after_data = True  # type: ignore[attr-defined]  # never retried: may be delivered
            raise
        for index in accepted:
            results[index] = Result(_disposition(code), _reply(code, message), remote)
        return [r for r in results if r is not None]

    def _sendable(self, claim: Claim, body: bytes) -> bytes:
        """`body` with lines over 998 octets broken (connectors.lines), before SIZE is taken."""
        sendable = break_long_lines(body)
        if sendable is not body:
            self.c.events.emit(
                catalog.LINES_BROKEN, queue_id=claim.queue_id, limit=LIMIT, host=self.t.name
            )
        return sendable

    def _mail_options(self, conn: smtplib.SMTP, claim: Claim, body: bytes) -> list[str] | Result:
        options = []
        if conn.has_extn("size"):
            options.append(f"SIZE={len(body)}")
        if claim.smtputf8:
            if not conn.has_extn("smtputf8"):
                return Result(
                    Disposition.FAILED,
                    "554 5.6.7 SMTPUTF8 is required but the smarthost does not offer it",
                    self.t.host,
                )
            options.append("SMTPUTF8")
            conn.command_encoding = "utf-8"
        else:
            conn.command_encoding = "ascii"
        if not body.isascii() and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    def abort(self) -> None:
        """Break a blocked send or receive (called from the supervisor's thread on a stall)."""
        self._stall_aborted = True
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
        self._shutdown()
        return "its smarthost connection was broken"

    def _shutdown(self) -> None:
        conn = self.conn or self._connecting
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def flush(self) -> None:
        """Nothing to sync: the smarthost's 250 to DATA is its promise."""

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.quit()
            with contextlib.suppress(Exception):
                conn.close()
