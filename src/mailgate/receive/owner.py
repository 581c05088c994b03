"""What an SMTP session needs of its handler (receive/smtp.py's ReceiveHandler): the
settings, the queue and the verdicts, named once for session.py, session_fast.py and
chunking.py, so that none of them imports the handler (nor each other) to be typed."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.config.schema import SmtpSettings
from mailgate.model import NewMessage
from mailgate.observe.events import EventLog
from mailgate.queue.store import QueueStore

# What runs a callable once the current replies are written: the event loop's call_soon.
Defer = Callable[[Callable[[], None]], object]


class SessionOwner(Protocol):
    """What a session needs of its handler (receive/smtp.py's ReceiveHandler) beyond
    aiosmtpd's hooks: the limits, admission and the events; and for the fast path
    (session_fast.py) the verdicts of MAIL, RCPT and DATA and the queue."""

    settings: SmtpSettings
    events: EventLog
    store: QueueStore
    committing: int  # sessions waiting for a commit (the listener's stop waits for them)

    def mail(self, envelope: Envelope, address: str, options: list[str]) -> str: ...

    def rcpt(
        self, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str: ...

    def message(self, server: SMTP, session: Session, envelope: Envelope) -> NewMessage | str: ...

    def durable(
        self, message: NewMessage, error: BaseException | None, defer: Defer | None = None
    ) -> str: ...

    def commit_now(self, message: NewMessage, defer: Defer | None = None) -> Future[Any] | None: ...

    def lone_session(self) -> bool: ...

    def linger(self, fileno: int) -> None: ...

    def internal_error(self, error: Exception) -> str: ...

    def guarded(self, defer: Defer) -> Defer: ...

    def admit(self, ip: str) -> str | None: ...

    def release(self, ip: str) -> None: ...

    def refused_by_protocol(self, server: SMTP, reply: str) -> None: ...
