"""receive.chunking: BDAT (RFC 3030 CHUNKING) for the SMTP session, as a mixin of MailgateSMTP.

`BDAT <size> [LAST]` is followed by exactly `size` octets of message, which are read as
counted octets, never as lines: no dot-unstuffing, and nothing inside a chunk is ever taken
for a command or for an end of data (no smuggling). The chunk is read whatever the reply,
so that the next command is found where the client put it. Chunks accumulate for the
envelope they were sent for; any reset of the envelope (RSET, HELO/EHLO, STARTTLS, the end
of a message) drops them, as does a client that goes away mid-chunk: nothing is kept. The
LAST chunk hands the message over exactly as DATA does (the long-line check, then the DATA
hook: content checks and the durable commit; 250 only once the message is on disk).

Replies: 501 5.5.4 for a bad argument; 503 5.5.1 without HELO/EHLO, MAIL or an accepted
RCPT, for DATA or RCPT after a BDAT of the same transaction; 530 before a required STARTTLS
(read_chunks_before_starttls lets BDAT through aiosmtpd's own check, which would leave
the chunk to be read as commands) or when AUTH is required;
552 5.3.4 once the chunks pass [smtp] max_message_size (the rest is read and dropped, the
transaction reset); `250 2.0.0 <size> octets received` for a chunk that is not the last.
Security: a chunk's size is read as at most 15 decimal digits; memory holds at most
max_message_size of chunks per session, beyond that octets are read and dropped.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP, Envelope, syntax

from mailgate.receive.body import too_long

if TYPE_CHECKING:
    from mailgate.receive.owner import SessionOwner

    _Base = SMTP
else:
    _Base = object

_ARGUMENT = re.compile(r"(\d{1,15})(?:[ \t]+(LAST))?\Z", re.IGNORECASE)
_READ = 1 << 16  # octets asked of the reader at a time


def read_chunks_before_starttls() -> None:
    """Let BDAT reach smtp_BDAT before STARTTLS. When TLS is required, aiosmtpd answers 530
    to every command but NOOP, EHLO, STARTTLS and QUIT without calling it, and the chunk
    that followed would then be read as commands; smtp_BDAT reads it and answers the same
    530. The SMTP listener calls this once (beside skip_disabled_command_logs); calling it
    again changes nothing."""
    aiosmtpd_smtp.ALLOWED_BEFORE_STARTTLS.add("BDAT")


def parse(arg: str | None) -> tuple[int, bool] | None:
    """(size, last) of a BDAT argument, or None if it is not `<digits> [LAST]`."""
    match = _ARGUMENT.match(arg or "")
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


class Chunking(_Base):
    """BDAT for an aiosmtpd SMTP session (see the module doc); MailgateSMTP inherits it
    before aiosmtpd's SMTP. Its state lives on the session, tied to one envelope."""

    if TYPE_CHECKING:
        receive_handler: SessionOwner

    _chunks: bytearray | None = None  # the message so far: chunks for `_chunks_for`
    _chunks_for: Envelope | None = None

    def bdat_started(self) -> bool:
        """Whether a BDAT was taken in the current transaction."""
        return self._chunks is not None and self._chunks_for is self.envelope

    async def refuse_data_after_bdat(self) -> bool:
        """For smtp_DATA: 503 and True if this transaction has BDAT chunks (RFC 3030 says
        one message is DATA or BDAT, never both)."""
        if not self.bdat_started():
            return False
        await self.push("503 5.5.1 Error: DATA after BDAT")
        return True

    # Untyped as aiosmtpd's, which session.py calls as untyped.
    def _set_post_data_state(self):  # type: ignore[no-untyped-def]
        self._chunks = self._chunks_for = None
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.bdat_started():
            await self.push("503 5.5.1 Error: RCPT after BDAT")
            return
        await super().smtp_RCPT(arg)

    @syntax("BDAT <size> [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        parsed = parse(arg)
        if parsed is None:
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            return
        size, last = parsed
        refusal = self._refusal()
        if refusal is None and not self.bdat_started():
            self._chunks, self._chunks_for = bytearray(), self.envelope
        kept = await self._read_chunk(size, keep=refusal is None)
        if refusal is not None:
            await self.push(refusal)
            return
        if not kept:
            await self.push("552 5.3.4 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        await self._end_of_message()

    def _refusal(self) -> str | None:
        """Why this session cannot take a chunk now, as the reply; None if it can."""
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None
        if self.require_starttls and not self._tls_protocol:
            return "530 5.7.0 Must issue a STARTTLS command first"
        if not session.host_name:
            return "503 5.5.1 Error: send HELO first"
        if self._auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if not envelope.mail_from:
            return "503 5.5.1 Error: need MAIL command"
        if not envelope.rcpt_tos:
            return "503 5.5.1 Error: need RCPT command"
        return None

    async def _read_chunk(self, size: int, *, keep: bool) -> bool:
        """Read the chunk's `size` octets, appending them to the message if `keep`; False
        if kept and that passes the size limit (then the message so far is dropped too).
        A client that goes away mid-chunk, or a session cancelled then, leaves nothing
        (asyncio.CancelledError, as aiosmtpd's DATA)."""
        try:
            return await self._read_octets(size, keep=keep)
        except asyncio.CancelledError:
            self._chunks = self._chunks_for = None
            self._writer.close()
            raise

    async def _read_octets(self, size: int, *, keep: bool) -> bool:
        limit = self.data_size_limit or 0
        fits = keep
        remaining = size
        while remaining:
            piece = await self._reader.read(min(remaining, _READ))
            if not piece:
                raise asyncio.CancelledError  # the client went away mid-chunk
            remaining -= len(piece)
            if fits:
                assert self._chunks is not None
                self._chunks += piece
                if limit and len(self._chunks) > limit:
                    fits = False
                    self._chunks.clear()
        return fits

    async def _end_of_message(self) -> None:
        """The LAST chunk: the same checks and hand-over as DATA's end of data."""
        assert self._chunks is not None and self.envelope is not None
        content = bytes(self._chunks)
        self._chunks = None
        longest = self.receive_handler.settings.max_line_length
        if too_long(content, longest + 2):  # the limit is without the CRLF
            await self.push(
                f"500 5.5.2 Line too long: a message line is longer than {longest} octets"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)
