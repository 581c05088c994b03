"""connectors.chunked: one transaction with the message in BDAT chunks (RFC 3030 CHUNKING).

The client's other half of connectors.client, used when the server offers CHUNKING: the
message goes as `BDAT <size>` chunks of at most CHUNK octets, the last one `BDAT <size>
LAST`, as it is (no dot-stuffing, a missing final CRLF added as DATA would). With PIPELINING
too, MAIL, every RCPT and every chunk leave in one write and the replies are read after it
(one round trip for the message); without, each command waits for its reply and no chunk is
sent unless a recipient was accepted. Replies map to recipients exactly as for DATA: the
MAIL reply if MAIL was refused, the RCPT reply where one was, else the reply to the first
refused chunk, or to the last one, which LMTP gives once per accepted recipient in order
(RFC 2033), and only when every chunk before it was taken. A refused transaction ends
with RSET. How it fails: `wire.ConnectionLost` when the server goes away, with
`after_data` once the last chunk was written (the server may have the whole message) and
the replies already read; socket and smtplib errors otherwise. Security: the commands are
the ones connectors.client checked; the body is counted, never parsed, so nothing in it
can end a chunk early.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Sequence

from mailgate.connectors import wire

CHUNK = 1 << 20  # octets per BDAT: big enough to be one chunk for nearly all mail


def chunks(body: bytes, size: int = CHUNK) -> list[bytes]:
    """`body` as BDAT commands, each with its data, ready to send: chunks of at most `size`
    octets, the last marked LAST (an empty body is one `BDAT 0 LAST`)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    out = []
    for start in range(0, len(body), size) if body else range(1):
        piece = body[start : start + size]
        last = b" LAST" if start + size >= len(body) else b""
        out.append(b"BDAT %d%s\r\n" % (len(piece), last) + piece)
    return out


def send(
    conn: smtplib.SMTP,
    mail: str,
    rcpts: Sequence[str],
    body: bytes,
    *,
    lmtp: bool,
    before_body: Callable[[], None],
    size: int = CHUNK,
) -> list[wire.Reply]:
    """One transaction with BDAT; one reply per recipient, in order (see the module doc)."""
    transaction = _Transaction(conn, len(rcpts), lmtp=lmtp)
    try:
        if conn.has_extn("pipelining"):
            before_body()
            transaction.pipelined(mail, rcpts, body, size)
        else:
            transaction.in_turn(mail, rcpts, body, size, before_body)
    except smtplib.SMTPServerDisconnected as exc:
        raise transaction.lost(exc) from exc
    return transaction.outcome()


class _Transaction:
    """What was sent and answered so far, so that a lost connection knows what stands."""

    def __init__(self, conn: smtplib.SMTP, recipients: int, *, lmtp: bool) -> None:
        self.conn = conn
        self.recipients = recipients
        self.lmtp = lmtp
        self.mail: wire.Reply | None = None
        self.rcpts: list[wire.Reply] = []
        self.refused: wire.Reply | None = None  # the first chunk refused, if one was
        self.final: list[wire.Reply] = []  # the replies to the LAST chunk
        self.sent_all = False  # the LAST chunk was written
        self.needs_rset = False

    @property
    def accepted(self) -> list[int]:
        return [i for i, r in enumerate(self.rcpts) if r.code in (250, 251)]

    def pipelined(self, mail: str, rcpts: Sequence[str], body: bytes, size: int) -> None:
        commands = "".join(f"{line}\r\n" for line in (mail, *rcpts)).encode(
            self.conn.command_encoding
        )
        pieces = chunks(body, size)
        self.conn.send(b"".join([commands, *pieces]))
        self.sent_all = True
        self.mail = wire.read_reply(self.conn)
        self.rcpts = [wire.read_reply(self.conn) for _ in rcpts]
        for _ in pieces[1:]:
            self._chunk_reply(wire.read_reply(self.conn))
        self._last_replies()

    def in_turn(
        self,
        mail: str,
        rcpts: Sequence[str],
        body: bytes,
        size: int,
        before_body: Callable[[], None],
    ) -> None:
        wire.send_lines(self.conn, [mail])
        self.mail = wire.read_reply(self.conn)
        if self.mail.code != 250:
            self.needs_rset = True
            return
        for rcpt in rcpts:
            wire.send_lines(self.conn, [rcpt])
            self.rcpts.append(wire.read_reply(self.conn))
        if not self.accepted:
            self.needs_rset = True
            return
        before_body()
        *first, last = chunks(body, size)
        for piece in first:
            self.conn.send(piece)
            self._chunk_reply(wire.read_reply(self.conn))
            if self.refused is not None:
                return  # RFC 3030: no chunk after a refused one
        self.conn.send(last)
        self.sent_all = True
        self._last_replies()

    def _chunk_reply(self, reply: wire.Reply) -> None:
        if reply.code != 250 and self.refused is None:
            self.refused = reply
            self.needs_rset = True

    def _last_replies(self) -> None:
        """LMTP answers the LAST chunk once per accepted recipient, but only if the server
        took the transaction that far: MAIL, a recipient and every chunk before it."""
        taken = self.mail is not None and self.mail.code == 250 and self.refused is None
        count = len(self.accepted) if self.lmtp and taken and self.accepted else 1
        while len(self.final) < count:
            self.final.append(wire.read_reply(self.conn))
        if not taken or not self.accepted or (self.final[0].code != 250 and not self.lmtp):
            self.needs_rset = True

    def outcome(self) -> list[wire.Reply]:
        if self.needs_rset:
            wire.reset_or_close(self.conn)
        assert self.mail is not None
        if self.mail.code != 250:
            return [self.mail] * self.recipients
        replies = list(self.rcpts)
        accepted = self.accepted
        if not accepted:
            return replies
        if self.refused is not None:
            answers = [self.refused] * len(accepted)
        elif self.lmtp:
            answers = self.final
        else:
            answers = self.final * len(accepted)
        for index, answer in zip(accepted, answers, strict=True):
            replies[index] = answer
        return replies

    def lost(self, exc: smtplib.SMTPServerDisconnected) -> wire.ConnectionLost:
        if not self.sent_all:
            return wire.ConnectionLost(str(exc), after_data=False)
        known: list[wire.Reply | None] = [None] * self.recipients
        for index, each in enumerate(self.rcpts):
            if index not in self.accepted:
                known[index] = each
        if self.mail is not None and self.mail.code != 250:
            known = [self.mail] * self.recipients
        elif self.refused is not None:
            for index in self.accepted:
                known[index] = self.refused
        elif self.lmtp:
            for index, each in zip(self.accepted, self.final, strict=False):
                known[index] = each
        return wire.ConnectionLost(str(exc), after_data=True, replies=known)
