"""One SMTP session: aiosmtpd's protocol with our replies, limits and TLS awareness.

- Every reply carries an enhanced status code (we advertise ENHANCEDSTATUSCODES).
- Sessions are admitted by the process's SessionLimiter at connect (421 4.7.0 and
  close when over the total or per-address cap).
- A session that collects `max_errors` error replies, or sends `max_commands`
  commands, is told 421 4.7.0 and closed (Postfix's hard error limit): a client
  probing or looping cannot hold a session forever; idle ones time out.
- A session on the implicit-TLS listener counts as encrypted from the first byte.
- Replies go out through a ReplyBuffer: every reply, and every group of replies to
  pipelined commands that are ready together, leaves in one write.
- MAIL, RCPT, DATA, RSET and NOOP in the states nearly every message meets are answered
  inside `data_received` by the fast path (session_fast.py), the same replies without
  aiosmtpd's per-line task turns; everything else is aiosmtpd's, as before.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP, Session

from mailgate.observe import catalog
from mailgate.receive.body import EndOfData, too_long
from mailgate.receive.chunking import Chunking
from mailgate.receive.owner import SessionOwner
from mailgate.receive.replies import with_enhanced_code
from mailgate.receive.reply_buffer import ReplyBuffer
from mailgate.receive.session_fast import FastPath, FastSession


def skip_disabled_command_logs() -> None:
    """aiosmtpd builds a sanitized copy of every command line for two log calls (debug and
    info of its "mail.log" logger) before the logger can say the level is off; mailgate
    logs through its events, never there. Wrap aiosmtpd's helper so that it returns at once
    while "mail.log" is below INFO (aiosmtpd calls it only at DEBUG and INFO). The SMTP
    listener calls this once; calling it again changes nothing."""
    original = aiosmtpd_smtp.sanitized_log
    if getattr(original, "checks_level", False):
        return
    mail_log = logging.getLogger("mail.log")

    def sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        if mail_log.isEnabledFor(logging.INFO):
            original(func, msg, *args, **kwargs)

    sanitized_log.checks_level = True  # type: ignore[attr-defined]
    aiosmtpd_smtp.sanitized_log = sanitized_log


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


def _uvloop_stream(transport: object) -> bool:
    return type(transport).__module__ == "uvloop.loop" and hasattr(transport, "write")


class MailgateSMTP(Chunking, FastSession):
    def __init__(self, handler: SessionOwner, *, implicit_tls: bool = False, **kwargs: Any) -> None:
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
        self._idle_until = 0.0
        self.command_running = False  # one of aiosmtpd's command coroutines is running
        self._replies = bytearray()  # the fast path's replies, sent at the end of its turn
        self.fast = FastPath(self)
        super().__init__(handler, **kwargs)
        self._smtp_methods = {
            name: self._tracked(method) for name, method in self._smtp_methods.items()
        }
        # Only aiosmtpd's own PLAIN and LOGIN are mechanisms: it would also take any handler
        # attribute named auth_* for one, advertise it, and fail when a client chose it.
        self._auth_methods = {
            name: method for name, method in self._auth_methods.items() if method.is_builtin
        }

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
        # A stream transport (asyncio's, TLS's, or uvloop's, which is no asyncio.Transport
        # subclass) gets its replies joined; anything else (a test's pipe) is used as it is.
        if isinstance(transport, asyncio.Transport) or _uvloop_stream(transport):
            transport = ReplyBuffer(transport, self.loop)  # type: ignore[arg-type]
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
        self.fast.connection_lost()
        if self._admitted_ip is not None:
            self.receive_handler.release(self._admitted_ip)
            self._admitted_ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """The client is done sending: aiosmtpd cancels the session's task, whose handler
        closes the connection; but a task cancelled before its first step (the client gone
        before its greeting, as uvloop orders it) never closes it, and its session slot
        would stay taken until the idle timeout. So what was answered goes out and the
        transport closes itself (False), as soon as the client is gone."""
        if self._refused:
            return False
        super().eof_received()
        self._flush()
        return False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        rest = self.fast.feed(data)
        if not rest:
            self.send_replies()
            handler = self.receive_handler
            if handler.lone_session() and self.fast.commit is None:
                # after what the reply deferred (its wake-ups, events), before the loop
                # sleeps; a failure is event 3004, not asyncio's log
                handler.guarded(self.loop.call_soon)(self._linger)
            return
        self.send_replies(with_next_step=True)  # joined by the replies to the rest
        super().data_received(rest)

    def _linger(self) -> None:
        """Wait awake for the client's next bytes (receive/linger.py), if this session is
        still the instance's only one and awaits no commit."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.fast.commit is not None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.receive_handler.linger(sock.fileno())

    def _tracked(
        self, method: Callable[[str], Awaitable[None]]
    ) -> Callable[[str], Awaitable[None]]:
        """aiosmtpd's command coroutine, marking the session busy while it runs: AUTH's and
        DATA's own reads look to the reader like the wait for a command, but are not."""

        async def run(arg: str) -> None:
            self.command_running = True
            try:
                await method(arg)
            finally:
                self.command_running = False

        functools.update_wrapper(run, method)  # HELP reads the syntax attributes
        return run

    # --- the idle timeout ------------------------------------------------------------------------
    def _reset_timeout(self, duration: float | None = None) -> None:
        """One timer per session, moved on lazily. aiosmtpd cancelled it and made a new one
        at every command (a heap push each time, a fifth of the event loop's own work per
        message); now a command only moves the deadline, and the timer, when it fires early,
        sets itself again for the rest."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_until = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_until:
            self._timeout_handle = self.loop.call_at(self._idle_until, self._idle_check)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    # --- replies ---------------------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):  # AUTH challenges (334): passed through untouched
            await super().push(status)
            return
        if not self._plain_replies:
            status = self._accounted(status)
        await super().push(status)
        if status.startswith("220"):
            # The greeting has nothing to join; STARTTLS's 220 must reach the socket before
            # the TLS layer takes it over.
            self._flush()
        if status[3:4] != "-":  # the last line of a reply: one command answered
            self._count(status)

    def _accounted(self, status: str) -> str:
        status = with_enhanced_code(status)
        if status.startswith(("552", "500 5.5.2 Line too long")):
            self.receive_handler.refused_by_protocol(self, status)
        return status

    def reply_now(self, status: str) -> None:
        """`push` for the fast path: the same reply, written without awaiting a drain (the
        fast path hands over to aiosmtpd when the client stops reading)."""
        status = self._accounted(status)
        self._replies += status.encode()
        self._replies += b"\r\n"
        self._count(status)

    def send_replies(self, *, with_next_step: bool = False) -> None:
        """Write the fast path's gathered replies, in one write, before anything later;
        `with_next_step`: together with what aiosmtpd's task answers in its next step."""
        replies = self._replies
        if not replies:
            return
        data = bytes(replies)
        replies.clear()
        transport = self.transport
        if isinstance(transport, ReplyBuffer):
            if with_next_step:
                transport.write_after_turn(data)
            else:
                transport.write_now(data)
        elif transport is not None and not transport.is_closing():
            transport.write(data)  # type: ignore[attr-defined]

    def _flush(self) -> None:
        transport = self._writer.transport
        if isinstance(transport, ReplyBuffer):
            transport.flush()

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
        self.send_replies()  # the replies earned so far go before the 421
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
        plain, after = self.plain_path(arg)
        if plain is not None:
            return plain, after
        address, rest = super()._getaddr(arg)
        return address, rest

    def plain_path(self, arg: str) -> tuple[str | None, str]:
        """A plain `<local@domain>` or `<>` and what follows it; (None, "") for anything the
        general parser must see."""
        match = _PLAIN_PATH.match(arg)
        if match is None or self.local_part_limit:
            return None, ""
        return match.group(1) or "<>", match.group(2)  # aiosmtpd spells null as "<>"

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the body in chunks instead of one await per line.

        Same contract: the message ends only at CRLF.CRLF (a bare LF or CR never ends
        it: no smuggling), a message over the size limit is read to its end and refused
        (552), dots are unstuffed, and commands a client pipelined after the end go back
        to the reader. Lines may be longer than RFC 5321's 1,000 octets, up to
        [smtp] max_line_length (500 beyond): real mail has them.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if await self.refuse_data_after_bdat():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = self.new_body()
        try:
            await self._read_data(body)
        except asyncio.CancelledError:
            self._writer.close()
            raise
        refusal = self.finish_body(body)
        if refusal is not None:
            await self.push(refusal)  # before the reset: its event names the sender
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    def new_body(self) -> EndOfData:
        return EndOfData(self.data_size_limit or 0)

    def finish_body(self, body: EndOfData) -> str | None:
        """A body that ended: the reply refusing it (552 too big, 500 a line too long), or
        None with the unstuffed content set on the envelope for the handler."""
        if body.too_much:
            return "552 Error: Too much mail data"
        stuffed = body.data
        content = bytes(stuffed[1:] if stuffed.startswith(b".") else stuffed)
        content = content.replace(b"\r\n.", b"\r\n")
        longest = self.receive_handler.settings.max_line_length
        if too_long(content, longest + 2):  # the limit is without the CRLF
            return f"500 5.5.2 Line too long: a message line is longer than {longest} octets"
        assert self.envelope is not None
        self.envelope.content = content
        self.envelope.original_content = content
        return None

    async def _read_data(self, body: EndOfData) -> None:
        """Read the dot-stuffed body into `body` up to its final ".CRLF"."""
        while True:
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                raise asyncio.CancelledError  # the client went away mid-DATA: nothing kept
            leftover = body.feed(chunk)
            if leftover is not None:
                if leftover:  # commands pipelined after the end of data: give them back
                    self._reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
                return

    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, with TLS layered on the socket's own transport: asyncio's TLS
        layer calls private methods of the transport beneath it, which a ReplyBuffer has not.
        The encrypted session gets a ReplyBuffer of its own (connection_made)."""
        buffered = self.transport
        if isinstance(buffered, ReplyBuffer):
            self.transport = buffered.inner
        try:
            await super().smtp_STARTTLS(arg)
        finally:
            if isinstance(buffered, ReplyBuffer) and self.transport is buffered.inner:
                self.transport = buffered  # TLS never started (501, 454): back to the buffer

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
