"""One SMTP session: aiosmtpd's protocol with our replies, limits and TLS awareness.

- Every reply carries an enhanced status code (we advertise ENHANCEDSTATUSCODES).
- Sessions are admitted by the process's SessionLimiter at connect (421 4.7.0 and
  close when over the total or per-address cap).
- A session that collects `max_errors` error replies, or sends `max_commands`
  commands, is told 421 4.7.0 and closed (Postfix's hard error limit): a client
  probing or looping cannot hold a session forever; idle ones time out.
- A session on the implicit-TLS listener counts as encrypted from the first byte.
"""

from __future__ import annotations

import collections
import re
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Session

from mailgate.observe import catalog
from mailgate.receive.replies import with_enhanced_code

if TYPE_CHECKING:
    import asyncio

    from mailgate.receive.smtp import ReceiveHandler


# `<>` or `<local@domain>` with a dot-atom-ish local part and a plain domain; anything
# else (quotes, routes, literals, UTF-8) goes to aiosmtpd's full RFC 5322 parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_PATH = re.compile(rf"<((?:{_DOT_ATOM}@{_DOMAIN})?)>\s*(.*)\Z", re.S)


def client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def client_name(session: Session) -> str:
    return f"{session.host_name or 'unknown'} [{client_ip(session)}]"


class MailgateSMTP(SMTP):
    def __init__(
        self, handler: ReceiveHandler, *, implicit_tls: bool = False, **kwargs: Any
    ) -> None:
        # aiosmtpd keeps command size limits in a class-level dict that every
        # session mutates; give each session its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._plain_replies = False
        self.receive_handler = handler
        self.implicit_tls = implicit_tls
        self.tls_active = False
        self._admitted_ip: str | None = None
        self._refused = False
        self._errors = 0
        self._commands = 0
        self._closing = False
        super().__init__(handler, **kwargs)

    # --- admission -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._admitted_ip is None and not self._refused
        if first:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            refusal = self.receive_handler.admit(ip)
            if refusal is not None:
                self._refused = True
                write = getattr(transport, "write", None)
                if write is not None:
                    write(f"{refusal}\r\n".encode())
                transport.close()
                return
            self._admitted_ip = ip
        super().connection_made(transport)
        if first and self.implicit_tls and transport.get_extra_info("ssl_object") is not None:
            self.tls_active = True
            # aiosmtpd checks this attribute for "TLS is up": no STARTTLS offered, AUTH allowed.
            self._tls_protocol = transport  # type: ignore[assignment]
        elif not first:
            self.tls_active = True  # aiosmtpd calls us again once STARTTLS completed

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # never admitted: aiosmtpd knows nothing of this connection
        if self._admitted_ip is not None:
            self.receive_handler.release(self._admitted_ip)
            self._admitted_ip = None
        super().connection_lost(error)

    # --- replies ---------------------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):  # AUTH challenges (334): passed through untouched
            await super().push(status)
            return
        if not self._plain_replies:
            status = with_enhanced_code(status)
            if status.startswith(("552", "500 5.5.2 Line too long")):
                self.receive_handler.refused_by_protocol(self, status)
        await super().push(status)
        if status[3:4] != "-":  # the last line of a reply: one command answered
            self._count(status)

    def _count(self, status: str) -> None:
        self._commands += 1
        if status[:1] in "45" and not status.startswith("421"):
            self._errors += 1
        limits = self.receive_handler.settings
        if self._closing or (
            self._errors < limits.max_errors and self._commands < limits.max_commands
        ):
            return
        self._closing = True
        why = "errors" if self._errors >= limits.max_errors else "commands"
        session = self.session
        self.receive_handler.events.emit(
            catalog.SESSION_CLOSED,
            client=client_name(session) if session else "?",
            why=f"too many {why}",
        )
        transport = self.transport
        if transport is not None:
            write = getattr(transport, "write", None)
            if write is not None:
                write(f"421 4.7.0 Too many {why}, closing connection\r\n".encode())
            transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing, with a fast path for the plain `<local@domain>` that
        nearly every client sends (the general parser costs ~15% of a session's CPU)."""
        match = _PLAIN_PATH.match(arg)
        if match is not None and not self.local_part_limit:
            return match.group(1) or "<>", match.group(2)  # aiosmtpd spells null as "<>"
        address, rest = super()._getaddr(arg)
        return address, rest

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
