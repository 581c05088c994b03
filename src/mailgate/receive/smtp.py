"""receive.smtp: the ESMTP dialogue on aiosmtpd, and the hand-off to the queue.

The server answers 250 after DATA only once the message is durable in the queue
(the group committer's future completed). A storage failure answers 452 (full)
or 451 and leaves nothing behind, because the message is one transaction.
Recipients are checked at RCPT time against routing and the connector (550/554).
Every refusal of a remote party's input is an SMTP reply, never an exception;
an unexpected exception becomes 451 and event 3004, and the session goes on.
Security: remote text reaches events only through escaping sinks; nothing from
the client names a file.
"""

from __future__ import annotations

import asyncio
import collections
import time
import traceback
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.errors import StoreError
from mailgate.interchange.wakeup import Wakeup
from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.queue.store import QueueStore
from mailgate.receive.checks import address_problem, content_problem, header_message_id
from mailgate.receive.received import received_header
from mailgate.receive.replies import with_enhanced_code
from mailgate.route.policy import RecipientPolicy


@dataclass(frozen=True, slots=True)
class ReceiveSettings:
    hostname: str
    max_message_size: int
    max_recipients: int
    timeout: float
    commit_timeout: float
    reject_8bit_headers: bool


def client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def client_name(session: Session) -> str:
    return f"{session.host_name or 'unknown'} [{client_ip(session)}]"


class MailgateSMTP(SMTP):
    """aiosmtpd's protocol with enhanced status codes on every reply."""

    def __init__(self, handler: ReceiveHandler, **kwargs: Any) -> None:
        # aiosmtpd keeps command size limits in a class-level dict that every
        # session mutates; give each session its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._plain_replies = False
        self.receive_handler = handler
        super().__init__(handler, **kwargs)

    async def push(self, status: str) -> None:  # type: ignore[override]
        if not self._plain_replies:
            status = with_enhanced_code(status)
            if status.startswith(("552", "500 5.5.2 Line too long")):
                self.receive_handler.refused_by_protocol(self, status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False


class ReceiveHandler:
    """aiosmtpd handler hooks: policy at MAIL/RCPT, durability at DATA."""

    def __init__(
        self,
        settings: ReceiveSettings,
        store: QueueStore,
        policy: RecipientPolicy,
        wakeup: Wakeup,
        events: EventLog,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.wakeup = wakeup
        self.events = events
        self.counters = counters or Counters()
        self.committing = 0

    def protocol(self) -> MailgateSMTP:
        s = self.settings
        return MailgateSMTP(
            self,
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=s.hostname,
            ident="ESMTP mailgate",
            timeout=s.timeout,
        )

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
        return [*responses, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
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
        verdict = self.policy.check(address, client_ip(session))
        if not verdict.accepted:
            self.counters.add("mailgate_smtp_recipients_rejected_total")
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
        data: bytes = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else str(envelope.mail_from)
        client = client_name(session)
        problem = content_problem(
            data,
            smtputf8=bool(envelope.smtp_utf8),
            reject_8bit_headers=self.settings.reject_8bit_headers,
        )
        if problem:
            self.counters.add("mailgate_messages_refused_total")
            self.events.emit(catalog.MESSAGE_REFUSED, client=client, sender=sender, reply=problem)
            return problem
        now = time.time()
        queue_id = new_queue_id(now)
        routes: dict[str, str] = envelope.__dict__.get("mailgate_routes", {})
        protocol = (
            "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP" if session.extended_smtp else "SMTP"
        )
        trace = received_header(
            helo=session.host_name,
            peer_ip=client_ip(session),
            hostname=self.settings.hostname,
            protocol=protocol,
            queue_id=queue_id,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
            when=now,
        )
        message = NewMessage(
            queue_id=queue_id,
            sender=sender,
            recipients=tuple(NewRecipient(a, routes[a]) for a in envelope.rcpt_tos),
            body=trace + data,
            received_at=now,
            client=client,
            header_message_id=header_message_id(data),
            smtputf8=bool(envelope.smtp_utf8),
        )
        reply = await self._make_durable(message)
        if reply is not None:
            return reply
        self.wakeup.notify(*{r.connector for r in message.recipients})
        self.counters.add("mailgate_messages_received_total", source="smtp")
        self.counters.add("mailgate_bytes_received_total", len(message.body), source="smtp")
        self.events.emit(
            catalog.MESSAGE_RECEIVED,
            queue_id=queue_id,
            client=client,
            sender=sender,
            recipients=len(message.recipients),
            size=len(message.body),
            message_id=message.header_message_id or "-",
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _make_durable(self, message: NewMessage) -> str | None:
        """Wait for the queue to commit `message`; a 4xx reply if it could not."""
        self.committing += 1
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self.store.enqueue(message)), self.settings.commit_timeout
            )
        except StoreError as exc:
            reply = (
                "452 4.3.1 Insufficient system storage, try again later"
                if exc.full
                else "451 4.3.0 Temporary queue failure, try again later"
            )
            error = str(exc)
        except TimeoutError:
            reply, error = "451 4.3.0 Queue is not answering, try again later", "commit timed out"
        else:
            return None
        finally:
            self.committing -= 1
        self.events.emit(
            catalog.STORE_FAILED_RECEIVE,
            client=message.client,
            sender=message.sender,
            error=error,
            reply=reply,
        )
        return reply

    async def handle_exception(self, error: Exception) -> str:
        self.events.emit(
            catalog.SESSION_ERROR,
            client="?",
            error=repr(error),
            traceback="".join(traceback.format_exception(error)),
        )
        return "451 4.3.0 Internal error, try again later"

    def refused_by_protocol(self, server: MailgateSMTP, reply: str) -> None:
        session = server.session
        envelope = server.envelope
        self.events.emit(
            catalog.MESSAGE_REFUSED,
            client=client_name(session) if session else "?",
            sender=(envelope.mail_from if envelope else None) or "",
            reply=reply,
        )
