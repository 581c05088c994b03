"""A real SMTP server on loopback that records what it receives and answers as scripted.

Built on aiosmtpd's Controller (a test server in the test process, as aiosmtpd's and
Mailman's own suites do). Script replies per command and address, optionally for a
limited number of times: `sink.fail("RCPT", "550 5.1.1 no such user", address="bad@x")`,
`sink.fail("DATA", "451 4.3.0 try later", times=1)`; `sink.replied` records when each
scripted reply was given (wall clock), so a test can time what follows it.
`sink.drop("DATA")` closes the connection after the message instead of answering. Counts
connections, so tests can see connection reuse. `sink.hang("MAIL")` makes that command
wait without a reply until `sink.release()` (a smarthost that hangs mid-session, then
comes back). `host` puts it on another loopback address (127.0.0.2 ...), for mail hosts
that DNS cannot give ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.process import free_port, wait_for

DROP = "(drop the connection)"


@dataclass
class Rule:
    command: str
    reply: str
    address: str | None
    times: int | None


@dataclass(frozen=True)
class Replied:
    """A scripted reply the sink gave, and when (time.time(), just before it is sent)."""

    command: str
    address: str | None
    reply: str
    at: float


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self.sink.held("MAIL")
        reply = self.sink.scripted("MAIL", address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self.sink.held("RCPT")
        reply = self.sink.scripted("RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.sink.held("DATA")  # after the final ".": the message is here, unanswered
        if self.sink.scripted("DATA", None, drop=True):
            server.transport.abort()  # gone without a reply: the message may be delivered
            return ""
        reply = self.sink.scripted("DATA", None)
        if reply:
            return reply
        self.sink.record(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                list(envelope.mail_options),
            )
        )
        return "250 2.0.0 OK: queued"


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, sink: Sink, port: int) -> None:
        extra: dict[str, Any] = {}
        if sink.auth is not None:
            extra = {"authenticator": sink.authenticate, "auth_require_tls": False}
        if sink.tls is not None:
            extra["tls_context"] = sink.tls
        super().__init__(
            _Handler(sink), hostname=sink.host, port=port, enable_SMTPUTF8=sink.smtputf8,
            server_hostname="sink.test", ready_timeout=10, **extra,
        )  # fmt: skip
        self.sink = sink

    def factory(self) -> Any:
        self.sink.count_connection()
        return super().factory()


class Sink:
    def __init__(
        self,
        port: int | None = None,
        *,
        smtputf8: bool = True,
        auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host  # any 127.0.0.0/8 address is loopback on Linux (MX tests use several)
        self.port = port or free_port()
        self.tls = tls  # offered with STARTTLS
        self.smtputf8 = smtputf8
        self.auth = auth
        self.pipelining = False  # aiosmtpd offers no PIPELINING; a test may ask for it
        self.logins: list[str] = []
        self.messages: list[Received] = []
        self.connections = 0
        self.rules: list[Rule] = []
        self.replied: list[Replied] = []
        self.hanging = 0  # sessions waiting in a hung command now
        self._hung: set[str] = set()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._controller: _Controller | None = None

    def fail(
        self, command: str, reply: str, *, address: str | None = None, times: int | None = None
    ) -> None:
        with self._lock:
            self.rules.append(Rule(command, reply, address, times))

    def hang(self, command: str) -> None:
        """Make `command` (MAIL, RCPT or DATA) wait without replying until `release()`."""
        with self._lock:
            self._hung.add(command)
            self._released.clear()

    def release(self) -> None:
        with self._lock:
            self._hung.clear()
            self._released.set()

    async def held(self, command: str) -> None:
        with self._lock:
            if command not in self._hung:
                return
            self.hanging += 1
        try:
            while not self._released.is_set():
                await asyncio.sleep(0.02)
        finally:
            with self._lock:
                self.hanging -= 1

    def drop(self, command: str, *, times: int | None = None) -> None:
        """Close the connection instead of answering `command` (DATA: after the message)."""
        self.fail(command, DROP, times=times)

    def scripted(self, command: str, address: str | None, *, drop: bool = False) -> str | None:
        """The scripted reply to `command`, if any; with `drop`, only a drop (and the other
        rules are left alone), else anything but a drop."""
        with self._lock:
            for rule in self.rules:
                if rule.command != command or (rule.address and rule.address != address):
                    continue
                if (rule.reply == DROP) != drop:
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                self.replied.append(Replied(command, address, rule.reply, time.time()))
                return rule.reply
        return None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        user = data.login.decode() if isinstance(data, LoginPassword) else ""
        ok = (
            self.auth is not None
            and isinstance(data, LoginPassword)
            and ((user, data.password.decode()) == self.auth)
        )
        self.logins.append(f"{user}:{'ok' if ok else 'failed'}")
        return AuthResult(success=ok, handled=False)

    def record(self, message: Received) -> None:
        with self._lock:
            self.messages.append(message)

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def wait_messages(self, count: int, timeout: float = 10) -> list[Received]:
        wait_for(lambda: len(self.messages) >= count, timeout, what=f"{count} message(s) at sink")
        return list(self.messages)

    def start(self) -> Sink:
        self._controller = _Controller(self, self.port)
        self._controller.start()
        self.connections = 0  # the controller's own readiness probe is not a client
        return self

    def stop(self) -> None:
        self.release()  # no handler may outlive the server
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HangingServer:
    """Accepts TCP connections on loopback and never says a word (a wedged smarthost);
    with a `greeting`, says only that (a "421 busy" mail host) and keeps the line open."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", greeting: bytes = b"") -> None:
        import socket

        self.port = port
        self.greeting = greeting
        self.accepted = 0
        self._clients: list[socket.socket] = []
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                continue
            self._clients.append(client)
            self.accepted += 1
            if self.greeting:
                with contextlib.suppress(OSError):
                    client.sendall(self.greeting)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self._clients:
            client.close()
        self._sock.close()
