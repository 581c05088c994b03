"""receive.smtp: the ESMTP dialogue's policy and the hand-off to the queue.

The server answers 250 after DATA only once the message is durable in the queue
(the group committer's future completed). A storage failure answers 452 (full)
or 451 and leaves nothing behind, because the message is one transaction.
Recipients are checked at RCPT time against routing, relay control and the
connector (550/554). Every refusal of a remote party's input is an SMTP reply,
never an exception; an unexpected exception becomes 451 and event 3004, and the
session goes on.
Security: STARTTLS (and implicit TLS) with the configured certificate; AUTH
PLAIN/LOGIN only over TLS unless explicitly allowed, checked against scrypt
hashes, failures throttled per address and logged without the password;
authenticated clients may relay. Remote text reaches events only through
escaping sinks; nothing from the client names a file.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate.config.schema import SmtpSettings
from mailgate.errors import StoreError
from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.store import QueueStore
from mailgate.receive.board import SessionBoard
from mailgate.receive.checks import address_problem, content_problem, header_message_id
from mailgate.receive.limits import AuthThrottle, SessionLimiter
from mailgate.receive.linger import linger
from mailgate.receive.owner import Defer
from mailgate.receive.received import received_header
from mailgate.receive.session import MailgateSMTP, client_ip, client_name
from mailgate.route.policy import RecipientPolicy
from mailgate.security.passwords import Credentials


def protocol_name(*, smtputf8: bool, extended: bool, tls: bool, authenticated: bool) -> str:
    """The `with` clause of Received: (RFC 3848, RFC 6531): ESMTP, ESMTPS, ESMTPSA, ..."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


async def _within(future: Future[Any], timeout: float) -> None:
    """Await a commit's future, TimeoutError after `timeout` (the commit is then cancelled
    if it has not started). asyncio.wait_for did the same with a task, a second future and
    their callbacks per message."""
    waiting = asyncio.wrap_future(future)
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        waiting.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await waiting
    except asyncio.CancelledError:
        if timed_out:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()


def _nobody(client_ip: str) -> bool:
    return False


class ReceiveHandler:
    """aiosmtpd handler hooks: admission, AUTH, policy at MAIL/RCPT, durability at DATA.

    `settings` is the [smtp] section as configured; `tls` and `credentials` are what its
    certificate and credentials file were made into (service/wiring.py), so a bad file
    is an error at start, not at the first STARTTLS or AUTH. `board` is the instance's
    shared table of sessions per address (none: this process counts alone)."""

    def __init__(
        self,
        settings: SmtpSettings,
        store: QueueStore,
        policy: RecipientPolicy,
        events: EventLog,
        counters: Counters | None = None,
        *,
        hostname: str,
        tls: ssl.SSLContext | None = None,
        credentials: Credentials | None = None,
        board: SessionBoard | None = None,
    ) -> None:
        self.settings = settings
        self.hostname = hostname
        self.tls = tls
        self.credentials = credentials
        self.store = store
        self.policy = policy
        self.events = events
        self.counters = counters or Counters()
        self.committing = 0
        exempt = policy.trusted_client if settings.relay_networks_exempt else _nobody
        self.limits = SessionLimiter(
            settings.max_sessions, settings.max_sessions_per_ip, board, exempt
        )
        # Not "auth_throttle": aiosmtpd takes any handler attribute named auth_* for an AUTH
        # mechanism and would advertise "AUTH THROTTLE".
        self.failed_auths = AuthThrottle(settings.auth_failures, settings.auth_window)

    def protocol(self, implicit_tls: bool = False) -> MailgateSMTP:
        s = self.settings
        auth: dict[str, Any] = {"auth_require_tls": not s.auth_insecure}
        if self.credentials is not None:
            auth["authenticator"] = self.authenticate
        else:
            auth["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]
        return MailgateSMTP(
            self,
            implicit_tls=implicit_tls,
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            ident="ESMTP mailgate",
            timeout=s.timeout,
            tls_context=None if implicit_tls else self.tls,
            require_starttls=s.require_tls and not implicit_tls,
            **auth,
        )

    # --- admission and AUTH (event loop thread) --------------------------------------------------
    def admit(self, ip: str) -> str | None:
        refusal = self.limits.acquire(ip)
        if refusal is not None:
            self.counters.add(metrics.SMTP_SESSIONS_REFUSED)
            self.events.emit(catalog.SESSION_REFUSED, client=f"[{ip}]", reply=refusal)
        return refusal

    def release(self, ip: str) -> None:
        self.limits.release(ip)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """AUTH PLAIN/LOGIN against the credentials file; the password is never logged."""
        ip, client = client_ip(session), client_name(session)
        login = isinstance(data, LoginPassword)
        user = data.login.decode("utf-8", "replace") if login else ""
        if self.failed_auths.blocked(ip):
            self.events.emit(catalog.AUTH_FAILED, user=user, client=client, why="too many failures")
            return AuthResult(
                success=False,
                handled=False,
                message="454 4.7.0 Too many failed authentication attempts, try again later",
            )
        password = data.password.decode("utf-8", "replace") if login else ""
        credentials = self.credentials
        if credentials is not None and user and credentials.verify(user, password):
            self.failed_auths.succeeded(ip)
            self.events.emit(catalog.AUTH_SUCCEEDED, user=user, client=client)
            return AuthResult(success=True, handled=False, auth_data=user)
        self.failed_auths.failed(ip)
        self.counters.add(metrics.SMTP_AUTH_FAILURES)
        self.events.emit(catalog.AUTH_FAILED, user=user, client=client, why="invalid credentials")
        return AuthResult(success=False, handled=False)

    # --- the dialogue ----------------------------------------------------------------------------
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        # aiosmtpd lists "250-AUTH" even with no mechanism: show it only when usable.
        responses = [r for r in responses if r.strip() != "250-AUTH"]
        return [*responses, "250-PIPELINING", "250-CHUNKING", "250-ENHANCEDSTATUSCODES", last]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return self.mail(envelope, address, options)

    def mail(self, envelope: Envelope, address: str, options: list[str]) -> str:
        """MAIL's verdict (handle_MAIL and the session's fast path, session_fast.py)."""
        if address != "<>":
            problem = address_problem(address, sender=True)
            if problem:
                return problem
        if not envelope.smtp_utf8 and not address.isascii():
            return "553 5.6.7 Non-ASCII sender address needs SMTPUTF8 (RFC 6531)"
        envelope.mail_from = address  # "<>" (truthy) stands for the null sender
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return self.rcpt(session, envelope, address, options)

    def rcpt(self, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        """RCPT's verdict (handle_RCPT and the session's fast path)."""
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        problem = address_problem(address, sender=False)
        if not problem and not envelope.smtp_utf8 and not address.isascii():
            problem = "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 (RFC 6531)"
        if problem:
            self.events.emit(
                catalog.INVALID_RECIPIENT,
                recipient=address,
                client=client_name(session),
                reply=problem,
            )
            return problem
        verdict = self.policy.check(
            address, client_ip(session), authenticated=bool(session.authenticated)
        )
        if not verdict.accepted:
            self.counters.add(metrics.SMTP_RECIPIENTS_REJECTED)
            event = catalog.RELAY_DENIED if verdict.relay_denied else catalog.INVALID_RECIPIENT
            self.events.emit(
                event, recipient=address, client=client_name(session), reply=verdict.reply
            )
            return verdict.reply
        assert verdict.connector is not None
        routes: dict[str, str] = envelope.__dict__.setdefault("mailgate_routes", {})
        seen: set[str] = envelope.__dict__.setdefault("mailgate_seen", set())
        if verdict.key not in seen:  # a recipient given twice is delivered once
            seen.add(verdict.key)
            routes[address] = verdict.connector
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return verdict.reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        prepared = self.message(server, session, envelope)
        if isinstance(prepared, str):
            return prepared
        done = self.commit_now(prepared)
        if done is not None:
            return self.durable(prepared, done.exception())
        self.committing += 1
        error: StoreError | TimeoutError | None = None
        try:
            await _within(self.store.enqueue(prepared), self.settings.commit_timeout)
        except (StoreError, TimeoutError) as exc:
            error = exc
        finally:
            self.committing -= 1
        return self.durable(prepared, error)

    def lone_session(self) -> bool:
        """Whether a session may linger after its reply (receive/linger.py): the instance's
        only one (a spin would take a core from another worker's sessions), with [smtp]
        reply_linger on."""
        limits = self.limits
        return (
            limits.total == 1
            and self.settings.reply_linger > 0
            and limits.board.open_sessions() == 1
        )

    def linger(self, fileno: int) -> None:
        """Wait awake for a lone session's next bytes on `fileno` (receive/linger.py), if it
        is still the instance's only one; counted by how the wait ended."""
        if self.lone_session():
            came = linger(fileno, self.settings.reply_linger)
            self.counters.add(metrics.SMTP_LINGERS, outcome="bytes" if came else "bound")

    def commit_now(self, message: NewMessage, defer: Defer | None = None) -> Future[Any] | None:
        """The message committed in this thread, if this process has at most
        [smtp] inline_commit_sessions sessions open and the writer lock is free now
        (queue/inline.py): its future, done; None: queue it for the group commit. With
        `defer` (the loop's call_soon), the commit's wake-ups are sent after the reply."""
        done, path = None, "group"
        if self.limits.total <= self.settings.inline_commit_sessions:
            done = self.store.enqueue_now(message, defer)
        if done is not None:
            inline = self.store.inline
            path = "inline-unlocked" if inline is not None and inline.last_outside else "inline"
        self.counters.add(metrics.SMTP_COMMITS, path=path)
        return done

    def message(self, server: SMTP, session: Session, envelope: Envelope) -> NewMessage | str:
        """The message to queue for a DATA (or BDAT) that ended, or the reply refusing it."""
        data: bytes = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else str(envelope.mail_from)
        client = client_name(session)
        problem = content_problem(
            data,
            smtputf8=bool(envelope.smtp_utf8),
            reject_8bit_headers=self.settings.reject_8bit_headers,
            max_header_size=self.settings.max_header_size,
        )
        if problem:
            self.counters.add(metrics.MESSAGES_REFUSED)
            self.events.emit(catalog.MESSAGE_REFUSED, client=client, sender=sender, reply=problem)
            return problem
        now = time.time()
        queue_id = new_queue_id(now)
        routes: dict[str, str] = envelope.__dict__.get("mailgate_routes", {})
        trace = received_header(
            helo=session.host_name,
            peer_ip=client_ip(session),
            hostname=self.hostname,
            protocol=protocol_name(
                smtputf8=bool(envelope.smtp_utf8),
                extended=session.extended_smtp,
                tls=isinstance(server, MailgateSMTP) and server.tls_active,
                authenticated=bool(session.authenticated),
            ),
            queue_id=queue_id,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
            when=now,
        )
        return NewMessage(
            queue_id=queue_id,
            sender=sender,
            recipients=tuple(NewRecipient(a, routes[a]) for a in envelope.rcpt_tos),
            body=trace + data,
            received_at=now,
            client=client,
            header_message_id=header_message_id(data),
            smtputf8=bool(envelope.smtp_utf8),
        )

    def durable(
        self, message: NewMessage, error: BaseException | None, defer: Defer | None = None
    ) -> str:
        """The reply once `message`'s commit ended: 250 when it is on disk (`error` None),
        else 452 (storage full), or 451 (any other store failure, or the commit timed out),
        with event 3020. The commit itself woke the connectors (queue/effects.py). With
        `defer` (the loop's call_soon), a 250's counters and event 3000 come after the
        reply is written: at one session they were on the path from fdatasync to reply."""
        if error is None:
            if defer is None:
                self.received(message)
            else:
                defer(functools.partial(self.received, message))
            return f"250 2.0.0 Ok: queued as {message.queue_id}"
        if isinstance(error, StoreError):
            reply = (
                "452 4.3.1 Insufficient system storage, try again later"
                if error.full
                else "451 4.3.0 Temporary queue failure, try again later"
            )
            why = str(error)
        elif isinstance(error, TimeoutError):
            reply, why = "451 4.3.0 Queue is not answering, try again later", "commit timed out"
        else:
            reply, why = "451 4.3.0 Temporary queue failure, try again later", repr(error)
        self.events.emit(
            catalog.STORE_FAILED_RECEIVE,
            client=message.client,
            sender=message.sender,
            error=why,
            reply=reply,
        )
        return reply

    def guarded(self, defer: Defer) -> Defer:
        """`defer`, each callable it is given reporting a failure as event 3004 instead of to
        asyncio's log: what follows a 250 (counters, event 3000) must not fail unseen. The
        queue's effects guard themselves (event 4050, queue/effects.py)."""

        def run(call: Callable[[], None]) -> None:
            try:
                call()
            except Exception as exc:
                self.internal_error(exc)

        return lambda call: defer(functools.partial(run, call))

    def received(self, message: NewMessage) -> None:
        """A message is on disk and answered 250: count it, event 3000."""
        self.counters.add(metrics.MESSAGES_RECEIVED, source="smtp")
        self.counters.add(metrics.BYTES_RECEIVED, len(message.body), source="smtp")
        self.events.emit(
            catalog.MESSAGE_RECEIVED,
            queue_id=message.queue_id,
            client=message.client,
            sender=message.sender,
            recipients=len(message.recipients),
            size=len(message.body),
            message_id=message.header_message_id or "-",
        )

    async def handle_exception(self, error: Exception) -> str:
        return self.internal_error(error)

    def internal_error(self, error: Exception) -> str:
        """An unexpected exception of a command: event 3004, and 451 to the client."""
        self.events.emit(
            catalog.SESSION_ERROR,
            client="?",
            error=repr(error),
            traceback="".join(traceback.format_exception(error)),
        )
        return "451 4.3.0 Internal error, try again later"

    def refused_by_protocol(self, server: SMTP, reply: str) -> None:
        session = server.session
        envelope = server.envelope
        self.events.emit(
            catalog.MESSAGE_REFUSED,
            client=client_name(session) if session else "?",
            sender=(envelope.mail_from if envelope else None) or "",
            reply=reply,
        )
