"""The SMTP client's replies and its raw exchanges on a connection, for client.py (DATA) and
chunked.py (BDAT) alike: a reply and what it means for a recipient, the loss of a connection
mid-transaction, and sending lines, reading a reply, resetting. Commands are built by the
callers from validated addresses; nothing here logs what it sends.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass

from mailgate.model import Disposition


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # without the code, whitespace folded

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def disposition(self) -> Disposition:
        return disposition(self.code)


def disposition(code: int) -> Disposition:
    if 200 <= code < 300:
        return Disposition.DELIVERED
    if 500 <= code < 600:
        return Disposition.FAILED
    return Disposition.DEFERRED


def reply(code: int, message: bytes | str) -> Reply:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return Reply(code, " ".join(text.split()))


class ConnectionLost(smtplib.SMTPServerDisconnected):
    """The server closed the connection, or it failed, in the middle of a transaction.

    After the whole message was sent (`after_data`), `replies` holds one entry per
    recipient: the final reply it had (refused at RCPT, or LMTP's reply read before the
    loss), or None for one whose fate is unknown (it may have been delivered)."""

    def __init__(
        self, error: str, *, after_data: bool, replies: Sequence[Reply | None] = ()
    ) -> None:
        super().__init__(error)
        self.after_data = after_data
        self.replies = list(replies)


def reset_or_close(conn: smtplib.SMTP) -> None:
    try:
        send_lines(conn, ["RSET"])
        read_reply(conn)
    except smtplib.SMTPException:
        conn.close()  # the next use reconnects


def send_lines(conn: smtplib.SMTP, lines: Sequence[str]) -> None:
    conn.send("".join(f"{line}\r\n" for line in lines))


def read_reply(conn: smtplib.SMTP) -> Reply:
    code, message = conn.getreply()
    return reply(code, message)
