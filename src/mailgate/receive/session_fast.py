"""The hot path of an SMTP session: MAIL, RCPT, DATA, RSET and NOOP answered as bytes arrive.

aiosmtpd runs a session as a task reading lines from an asyncio StreamReader: every command
wakes the task through a future, runs a chain of coroutines and awaits a drain, three or four
turns of the event loop and a few dozen Python calls before the reply leaves. At one session
that is most of the time a message takes (issue 14). `FastPath` answers the commands nearly
every message consists of inside the protocol's `data_received`, in one pass, and writes every
reply a chunk of pipelined commands earned in one write; a message's body is scanned as it
arrives and handed to the queue's committer, and the 250 goes out from the commit's callback.

Contract: the fast path only ever takes a command aiosmtpd would have taken the same way. It
engages only while aiosmtpd's task is idle (waiting for the next command line, nothing
buffered, no command of its own running), takes only complete lines, and for each one first
checks, without changing anything, that the command is one it handles in a state it handles
(EHLO given, no AUTH or STARTTLS owed, plain `<local@domain>` paths, known parameters). The
first line it does not take goes, with everything after it, to aiosmtpd's reader, which then
runs the session until it is idle again. Replies are built by the same ReceiveHandler
verdicts, go through the session's reply accounting (enhanced codes, error and command limits)
and read exactly as aiosmtpd's.

The guarantees of the slow path hold here too: a body ends only at CRLF.CRLF (a bare LF or CR
never ends it: no smuggling; receive/body.py's EndOfData), a body over the size limit is
read to its end and refused with 552 keeping nothing, lines over [smtp] max_line_length are
refused, the 250 follows the commit (the future resolves only after the flush), a commit that
fails or times out is 451/452, a client gone mid-body leaves nothing, and input is never
buffered without bound: while a commit is awaited, arriving bytes are held, and reading pauses
beyond 64 KiB; a client that does not read its replies is left to the slow path's drain.
Security: client bytes reach nothing but the parsers and the handler's checks, as before.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from aiosmtpd.smtp import SMTP

from mailgate.model import NewMessage
from mailgate.receive.body import EndOfData
from mailgate.receive.owner import SessionOwner

HOLD_LIMIT = 64 * 1024  # bytes held while a commit is awaited before reading pauses
WRITE_LIMIT = 256 * 1024  # replies unread by the client beyond which the slow path takes over
_FAST_VERBS = frozenset((b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP"))
_BODIES = frozenset(("7BIT", "8BITMIME"))


class FastSession(SMTP):
    """What the fast path needs of its session beyond aiosmtpd's SMTP: receive/session.py's
    MailgateSMTP, which derives from this, has each of these."""

    receive_handler: SessionOwner
    command_running: bool  # one of aiosmtpd's command coroutines is running
    _closing: bool  # the session is being closed (an error or command limit)

    def reply_now(self, status: str) -> None:
        raise NotImplementedError

    def send_replies(self, *, with_next_step: bool = False) -> None:
        raise NotImplementedError

    def plain_path(self, arg: str) -> tuple[str | None, str]:
        raise NotImplementedError

    def new_body(self) -> EndOfData:
        raise NotImplementedError

    def finish_body(self, body: EndOfData) -> str | None:
        raise NotImplementedError

    def bdat_started(self) -> bool:
        raise NotImplementedError


class FastPath:
    """The fast path of one session (see the module docstring)."""

    def __init__(self, smtp: FastSession) -> None:
        self.smtp = smtp
        self.body: EndOfData | None = None  # set between DATA's 354 and the final "."
        self.commit: Future[Any] | None = None  # the message whose commit is awaited
        self._message: NewMessage | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._held = bytearray()  # what arrived while the commit was awaited
        self._paused = False
        self.lost = False
        self.enabled = smtp.receive_handler.settings.fast_path

    # --- entry -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take what the fast path can of `data`; return the rest for aiosmtpd's reader."""
        if not self.enabled:
            return data
        if self.body is not None:
            data = self._feed_body(data)
            if not data:
                return b""
        if self.commit is not None:
            self._hold(data)
            return b""
        return self._commands(data) if self.idle() else data

    def idle(self) -> bool:
        """aiosmtpd's task waits for a command line with nothing buffered (StreamReader's
        private state: the only way to know that no line of its own is half read)."""
        smtp = self.smtp
        reader = smtp._reader
        return (
            not smtp.command_running
            and reader._waiter is not None  # type: ignore[attr-defined]
            and not reader._buffer  # type: ignore[attr-defined]
            and not smtp._closing
        )

    def connection_lost(self) -> None:
        self.lost = True
        self.body = None
        self._held.clear()

    # --- commands --------------------------------------------------------------------------------
    def _commands(self, data: bytes) -> bytes:
        smtp = self.smtp
        start = 0
        size = len(data)
        while start < size:
            end = data.find(b"\n", start)
            if end < 0:
                break  # a partial line: aiosmtpd's reader collects it
            line = data[start : end + 1]
            if not self._command(line):
                break
            start = end + 1
            if self.body is not None:
                rest = self._feed_body(data[start:])
                if self.body is not None or self.commit is not None:
                    if rest:
                        self._hold(rest)
                    return b""
                data, start, size = rest, 0, len(rest)
            elif self.commit is not None:
                self._hold(data[start:])
                return b""
            transport = smtp.transport
            if transport is None or transport.is_closing() or smtp._closing:
                return b""
            if transport.get_write_buffer_size() > WRITE_LIMIT:  # type: ignore[attr-defined]
                break  # the client is not reading its replies: aiosmtpd's drain waits
        return data[start:]

    def _command(self, raw: bytes) -> bool:
        """Answer one complete command line; False (nothing changed) if it is not ours."""
        smtp = self.smtp
        line = raw.rstrip(b"\r\n")
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb not in _FAST_VERBS:
            return False
        session = smtp.session
        if session is None or not session.host_name or smtp._enforce_call_limit:
            return False
        command = verb.decode("ascii")
        limit = (
            smtp.command_size_limits[command] if session.extended_smtp else smtp.command_size_limit
        )
        if len(line) > limit or not smtp._tls_handshake_okay:
            return False
        if smtp.require_starttls and not smtp._tls_protocol:
            return False
        if smtp._auth_required and not session.authenticated:
            return False
        arg = str(rest.strip(), "utf-8", "surrogateescape") if rest else None
        if verb == b"MAIL":
            handled = self._mail(arg)
        elif verb == b"RCPT":
            handled = self._rcpt(arg)
        elif verb == b"DATA":
            handled = self._data(arg)
        else:  # RSET, NOOP: no handler hooks for them (ReceiveHandler has none)
            if arg and verb == b"RSET":
                return False
            if verb == b"RSET":
                smtp._set_rset_state()  # type: ignore[no-untyped-call]
            smtp.reply_now("250 OK")
            handled = True
        if handled:
            smtp._reset_timeout()
        return handled

    def _path(self, arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
        """The address and upper-cased parameters of a plain MAIL/RCPT argument, or None."""
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None
        address, params = self.smtp.plain_path(arg[len(keyword) :].strip())
        if address is None:
            return None
        if params and not self.smtp.session.extended_smtp:  # type: ignore[union-attr]
            return None
        return address, params.upper().split()

    def _mail(self, arg: str | None) -> bool:
        smtp = self.smtp
        envelope = smtp.envelope
        parsed = self._path(arg, "FROM:")
        if parsed is None or envelope is None or envelope.mail_from:
            return False
        address, options = parsed
        smtputf8 = False
        for option in options:
            name, eq, value = option.partition("=")
            if name == "BODY" and eq and value in _BODIES:
                continue
            if name == "SIZE" and eq and value.isascii() and value.isdigit():
                if smtp.data_size_limit and int(value) > smtp.data_size_limit:
                    return False  # aiosmtpd's 552
                continue
            if option == "SMTPUTF8":
                smtputf8 = True
                continue
            return False
        envelope.smtp_utf8 = smtputf8
        smtp.reply_now(smtp.receive_handler.mail(envelope, address, options))
        return True

    def _rcpt(self, arg: str | None) -> bool:
        smtp = self.smtp
        envelope = smtp.envelope
        if envelope is None or not envelope.mail_from or smtp.bdat_started():
            return False  # after BDAT: chunking.py's 503
        parsed = self._path(arg, "TO:")
        if parsed is None or parsed[1]:
            return False  # RCPT parameters: aiosmtpd's 555
        assert smtp.session is not None
        smtp.reply_now(smtp.receive_handler.rcpt(smtp.session, envelope, parsed[0], []))
        return True

    def _data(self, arg: str | None) -> bool:
        smtp = self.smtp
        envelope = smtp.envelope
        if arg or envelope is None or not envelope.rcpt_tos or smtp.bdat_started():
            return False
        smtp.reply_now("354 End data with <CR><LF>.<CR><LF>")
        self.body = smtp.new_body()
        return True

    # --- the body and its commit -----------------------------------------------------------------
    def _feed_body(self, data: bytes) -> bytes:
        """Scan body bytes; at the end, answer or start the commit; the bytes after the end."""
        body = self.body
        assert body is not None
        if not data:
            return b""
        after = body.feed(data)
        if after is None:
            return b""
        self.body = None
        smtp = self.smtp
        refusal = smtp.finish_body(body)
        if refusal is not None:
            smtp.reply_now(refusal)  # before the reset: its event names the sender
            smtp._set_post_data_state()  # type: ignore[no-untyped-call]
            return after
        assert smtp.session is not None and smtp.envelope is not None
        try:
            prepared = smtp.receive_handler.message(smtp, smtp.session, smtp.envelope)
        except Exception as exc:  # as aiosmtpd's task answers a failing hook: 451, event 3004
            smtp.reply_now(smtp.receive_handler.internal_error(exc))
            return after
        if isinstance(prepared, NewMessage):
            # What the commit owes besides the reply (wake-ups, counters, event 3000) waits
            # for the loop's next turn, after this chunk's replies are written: at one
            # session it stood between the fdatasync and the 250.
            defer = smtp.receive_handler.guarded(smtp.loop.call_soon)
            done = smtp.receive_handler.commit_now(prepared, defer)
            if done is None:
                self._start_commit(prepared)
            else:  # committed in this thread (queue/inline.py): answer at once
                smtp._set_post_data_state()  # type: ignore[no-untyped-call]
                smtp.reply_now(smtp.receive_handler.durable(prepared, done.exception(), defer))
        else:
            smtp._set_post_data_state()  # type: ignore[no-untyped-call]
            smtp.reply_now(prepared)
        return after

    def _start_commit(self, message: NewMessage) -> None:
        smtp = self.smtp
        handler = smtp.receive_handler
        loop = smtp.loop
        handler.committing += 1
        self._message = message
        future = handler.store.enqueue(message)
        self.commit = future
        self._timer = loop.call_later(handler.settings.commit_timeout, self._expired, future)
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._committed, done))

    def _expired(self, future: Future[Any]) -> None:
        if future is self.commit:
            future.cancel()  # not started yet: it never will; started: its result is ignored
            self._end_commit(TimeoutError())

    def _committed(self, future: Future[Any]) -> None:
        if future is not self.commit:
            return  # timed out before: answered already
        error = None if future.cancelled() else future.exception()
        self._end_commit(TimeoutError() if future.cancelled() else error)

    def _end_commit(self, error: BaseException | None) -> None:
        smtp = self.smtp
        handler = smtp.receive_handler
        message = self._message
        assert message is not None
        self.commit = None
        self._message = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handler.committing -= 1
        reply = handler.durable(message, error, handler.guarded(smtp.loop.call_soon))
        if self.lost:
            return
        smtp._set_post_data_state()  # type: ignore[no-untyped-call]
        smtp.reply_now(reply)
        held = bytes(self._held)
        self._held.clear()
        if self._paused:
            self._paused = False
            transport = smtp.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()  # type: ignore[attr-defined]
        if held:
            smtp.data_received(held)  # sends the replies, this one first
        else:
            smtp.send_replies()

    def _hold(self, data: bytes) -> None:
        if not data or self.lost:
            return
        self._held += data
        if len(self._held) > HOLD_LIMIT and not self._paused:
            transport = self.smtp.transport
            if transport is not None and not transport.is_closing():
                self._paused = True
                transport.pause_reading()  # type: ignore[attr-defined]
