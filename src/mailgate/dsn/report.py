"""Build an RFC 3464 `multipart/report; report-type=delivery-status` bounce.

The report has three parts: a human explanation, the machine-readable
`message/delivery-status` (one block per failed recipient with Final-Recipient,
Action, Status and Diagnostic-Code carrying the remote reply), and the original
message's headers (`text/rfc822-headers`). Built with the standard `email`
package; never raises on hostile original headers (they are passed through as
bytes, cut at a size limit). Pure: no I/O.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import SMTP

from mailgate.headers import split_headers

MAX_ORIGINAL_HEADERS = 64 * 1024
_STATUS = re.compile(r"^\s*([245])\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")
_CODE = re.compile(r"^\s*([245])\d\d\b")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    reply: str
    remote_mta: str | None = None
    status: str | None = None  # overrides the status taken from the reply (e.g. 4.4.7)


def status_of(reply: str) -> str:
    """The enhanced status of an SMTP reply: given, or the generic one for its class."""
    match = _STATUS.match(reply)
    if match:
        return match.group(2)
    code = _CODE.match(reply)
    return f"{code.group(1)}.0.0" if code else "5.0.0"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


def _status_block(headers: Sequence[tuple[str, str]]) -> EmailMessage:
    block = EmailMessage(policy=SMTP)
    for name, value in headers:
        block[name] = value
    return block


def build_bounce(
    *,
    queue_id: str,
    bounce_id: str,
    sender: str,
    hostname: str,
    arrival: float,
    now: float,
    failed: Sequence[FailedRecipient],
    original: bytes,
    delayed: bool = False,
) -> bytes:
    """The complete report (CRLF line ends) for the failed recipients of one message; with
    `delayed`, a warning that they are still being retried (Action: delayed)."""
    report = EmailMessage(policy=SMTP)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = email.utils.formatdate(now, localtime=True)
    report["Message-ID"] = f"<{bounce_id}.bounce@{hostname}>"
    report["Auto-Submitted"] = "auto-replied"
    report.set_content(_explanation(hostname, queue_id, failed, delayed))
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status")
    report.set_boundary(f"{bounce_id}/{hostname}")

    status = EmailMessage(policy=SMTP)
    status["Content-Type"] = "message/delivery-status"
    per_message = _status_block(
        [
            ("Reporting-MTA", f"dns; {hostname}"),
            ("X-Mailgate-Queue-ID", queue_id),
            ("Arrival-Date", email.utils.formatdate(arrival, localtime=True)),
        ]
    )
    blocks: list[Message[str, str] | str] = [per_message]
    for rcpt in failed:
        fields = [
            ("Final-Recipient", f"rfc822; {rcpt.address}"),
            ("Action", "delayed" if delayed else "failed"),
            ("Status", rcpt.status or status_of(rcpt.reply)),
        ]
        if rcpt.remote_mta:
            fields.append(("Remote-MTA", f"dns; {rcpt.remote_mta}"))
        fields.append(("Diagnostic-Code", f"smtp; {_one_line(rcpt.reply)}"))
        blocks.append(_status_block(fields))
    status.set_payload(blocks)
    report.attach(status)

    headers = EmailMessage(policy=SMTP)
    headers["Content-Type"] = "text/rfc822-headers"
    headers["Content-Transfer-Encoding"] = "8bit"
    original_headers = split_headers(original)[:MAX_ORIGINAL_HEADERS]
    # surrogateescape carries 8-bit header bytes through unchanged (the part is 8bit).
    headers.set_payload(original_headers.decode("ascii", "surrogateescape"))
    report.attach(headers)
    return report.as_bytes(policy=SMTP)


def _explanation(
    hostname: str, queue_id: str, failed: Sequence[FailedRecipient], delayed: bool = False
) -> str:
    if delayed:
        return (
            f"This is the mail system at host {hostname}.\n\n"
            "Your message could not be delivered yet to the recipients below. It is still\n"
            "being retried; you do not need to send it again. You will be told if it\n"
            "finally fails.\n\n"
            f"Queue ID: {queue_id}\n\n"
            + "".join(f"<{r.address}>: {_one_line(r.reply)}\n" for r in failed)
        )
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not be delivered",
        "to one or more recipients. The mail system's replies are below.",
        "",
        f"Queue ID: {queue_id}",
        "",
    ]
    for rcpt in failed:
        lines.append(f"<{rcpt.address}>: {_one_line(rcpt.reply)}")
    return "\n".join(lines) + "\n"
