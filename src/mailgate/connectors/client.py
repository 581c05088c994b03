"""connectors.client: the SMTP and LMTP client protocol of the smarthost, MX and LMTP connectors.

`open_client` connects (TCP, or a Unix socket path for LMTP), checks the greeting, says
EHLO (LHLO for LMTP), STARTTLS by policy and AUTH. `send_message` runs one transaction:
MAIL, RCPT for each recipient and DATA, sent in one write when the server offers
PIPELINING (RFC 2920); when it offers CHUNKING (RFC 3030) the message goes as BDAT chunks
instead (no dot-stuffing, no 354 to wait for), and with PIPELINING too the whole
transaction is one write. It returns one reply per recipient: its RCPT reply if refused,
the MAIL reply if MAIL was, else the reply to the message, which LMTP gives once per
accepted recipient, in order (RFC 2033). It raises `ConnectionLost` if the server goes away
(`after_data` once the whole message was sent: it may have been delivered; LMTP replies
already read travel with it) and smtplib's or the socket's errors for the rest; a
connector translates those at its boundary. Lines over 998 octets are broken before
(connectors.lines). Security: commands are built from addresses the receiver validated,
and a CR or LF in one is refused here too; a password is read from its file, never logged.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.connectors import chunked
from mailgate.connectors.wire import (
    ConnectionLost,
    Reply,
    disposition,
    read_reply,
    reply,
    reset_or_close,
    send_lines,
)

__all__ = ["ConnectionLost", "Reply", "disposition", "reply"]  # defined in wire.py

STARTTLS_MODES = ("none", "opportunistic", "required")


class TlsFailed(smtplib.SMTPException):
    """STARTTLS was offered and tried, and did not give a TLS session (a refusal, a failed
    handshake or certificate check); the connection is unusable."""


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class ClientSettings:
    helo: str
    starttls: str = "opportunistic"  # none | opportunistic | required
    verify: bool = True
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    timeout: float = 60.0
    lmtp: bool = False
    chunking: bool = True  # BDAT when the server offers CHUNKING
    password: str = field(default="", repr=False)  # given inline; else read from password_file


def open_client(
    settings: ClientSettings,
    address: str,
    port: int,
    server_name: str,
    on_socket: Callable[[smtplib.SMTP], None] = lambda conn: None,
) -> smtplib.SMTP:
    """A greeted (and, by policy, secured and authenticated) connection to `address`
    (`port` unused for a Unix socket path); `server_name` is the TLS name to verify.
    `on_socket` sees the connection before anything is read, so another thread can break
    a hung greeting."""
    kind = smtplib.LMTP if settings.lmtp else smtplib.SMTP
    conn = kind(local_hostname=settings.helo, timeout=settings.timeout)
    # smtplib takes the TLS server name from the constructor's host, which would also
    # connect at once; set here, so on_socket sees the connection before it connects.
    conn._host = server_name  # type: ignore[attr-defined]
    on_socket(conn)
    try:
        code, message = conn.connect(address, port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, message)
        code, message = conn.ehlo(settings.helo)
        if code != 250:
            raise smtplib.SMTPHeloError(code, message)
        secure(conn, settings)
        if settings.username:
            conn.login(settings.username, settings.password or _password(settings.password_file))
    except BaseException:
        conn.close()
        raise
    return conn


def secure(conn: smtplib.SMTP, settings: ClientSettings) -> None:
    if settings.starttls == "none":
        return
    if not conn.has_extn("starttls"):
        if settings.starttls == "required":
            raise smtplib.SMTPNotSupportedError("STARTTLS required but not offered")
        return
    try:
        conn.starttls(context=tls_context(settings))
    except OSError as exc:  # smtplib's errors are OSErrors too: a 454, a lost connection
        raise TlsFailed(f"STARTTLS failed: {error_text(exc)}") from exc
    code, message = conn.ehlo(settings.helo)
    if code != 250:
        raise smtplib.SMTPHeloError(code, message)


def tls_context(settings: ClientSettings) -> ssl.SSLContext:
    if settings.verify:
        return ssl.create_default_context(cafile=settings.ca_file or None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _password(path: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise smtplib.SMTPException(f"cannot read password file: {exc.strerror}") from None


def mail_options(conn: smtplib.SMTP, body: bytes, smtputf8: bool) -> list[str] | None:
    """MAIL parameters for `body` on `conn` (and its command encoding); None if the
    message needs SMTPUTF8 and the server does not offer it."""
    options = []
    if conn.has_extn("size"):
        options.append(f"SIZE={len(body)}")
    if smtputf8:
        if not conn.has_extn("smtputf8"):
            return None
        options.append("SMTPUTF8")
        conn.command_encoding = "utf-8"
    else:
        conn.command_encoding = "ascii"
    if not body.isascii() and conn.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    return options


def send_message(
    conn: smtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    body: bytes,
    options: Sequence[str],
    *,
    lmtp: bool = False,
    chunking: bool = True,
    before_body: Callable[[], None] = lambda: None,
) -> list[Reply]:
    """One transaction; one reply per recipient, in order (see the module doc).
    `before_body` is called once the server is ready for the message, before it is sent
    (with BDAT pipelined: before the one write, which carries the message too). `chunking`
    False sends DATA even to a server that offers CHUNKING."""
    for address in (sender, *recipients):
        if "\r" in address or "\n" in address:
            raise ValueError(f"line break in address {address!r}")
    mail = " ".join([f"MAIL FROM:<{sender}>", *options])
    rcpts = [f"RCPT TO:<{address}>" for address in recipients]
    if chunking and conn.has_extn("chunking"):
        return chunked.send(conn, mail, rcpts, body, lmtp=lmtp, before_body=before_body)
    try:
        if conn.has_extn("pipelining"):
            send_lines(conn, [mail, *rcpts, "DATA"])
            mail_reply = read_reply(conn)
            rcpt_replies = [read_reply(conn) for _ in rcpts]
            data_reply: Reply | None = read_reply(conn)
        else:
            send_lines(conn, [mail])
            mail_reply, rcpt_replies, data_reply = read_reply(conn), [], None
            if mail_reply.code == 250:
                for rcpt in rcpts:
                    send_lines(conn, [rcpt])
                    rcpt_replies.append(read_reply(conn))
    except smtplib.SMTPServerDisconnected as exc:
        raise ConnectionLost(str(exc), after_data=False) from exc
    if mail_reply.code != 250:
        _settle(conn, data_reply)
        return [mail_reply] * len(recipients)
    accepted = [i for i, r in enumerate(rcpt_replies) if r.code in (250, 251)]
    replies = list(rcpt_replies)
    if not accepted:
        _settle(conn, data_reply)
        return replies
    try:
        if data_reply is None:
            send_lines(conn, ["DATA"])
            data_reply = read_reply(conn)
    except smtplib.SMTPServerDisconnected as exc:
        raise ConnectionLost(str(exc), after_data=False) from exc
    if data_reply.code != 354:  # DATA itself refused: the reply of every accepted recipient
        reset_or_close(conn)
        for index in accepted:
            replies[index] = data_reply
        return replies
    before_body()
    got: list[Reply] = []
    try:
        _send_body(conn, body, len(accepted) if lmtp else 1, got)
    except smtplib.SMTPServerDisconnected as exc:
        known: list[Reply | None] = [None if i in accepted else r for i, r in enumerate(replies)]
        for index, each in zip(accepted, got, strict=False):
            known[index] = each
        raise ConnectionLost(str(exc), after_data=True, replies=known) from exc
    for index, each in zip(accepted, got if lmtp else got * len(accepted), strict=True):
        replies[index] = each
    return replies


def _send_body(conn: smtplib.SMTP, body: bytes, count: int, got: list[Reply]) -> None:
    """Send the message and read `count` replies to it into `got` (LMTP: one per accepted
    recipient), so those read before a failure are known."""
    data = re.sub(rb"(?m)^\.", b"..", body)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    conn.send(data + b".\r\n")
    while len(got) < count:
        got.append(read_reply(conn))


def _settle(conn: smtplib.SMTP, data_reply: Reply | None) -> None:
    """End a transaction that sends no message: a server that said 354 to a pipelined DATA
    although it accepted no recipient gets an empty message ending; then RSET."""
    try:
        if data_reply is not None and data_reply.code == 354:
            conn.send(b".\r\n")
            read_reply(conn)
    except smtplib.SMTPServerDisconnected:
        return
    reset_or_close(conn)


def rset(conn: smtplib.SMTP) -> bool:
    """Reset a connection kept between messages; False if it is no longer usable (the
    server dropped it while idle, say)."""
    try:
        send_lines(conn, ["RSET"])
        return read_reply(conn).code == 250
    except (OSError, smtplib.SMTPException):
        return False


def quit_and_close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        conn.close()
