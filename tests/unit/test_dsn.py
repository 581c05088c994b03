"""RFC 3464 bounces: structure, per-recipient fields, hostile original headers."""

from __future__ import annotations

import email
from email import policy

from mailgate.dsn.report import FailedRecipient, build_bounce, status_of


def test_status_from_replies() -> None:
    assert status_of("550 5.1.1 <x@y>: unknown") == "5.1.1"
    assert status_of("554 no such thing") == "5.0.0"
    assert status_of("451 try later") == "4.0.0"
    assert status_of("garbage") == "5.0.0"


def test_bounce_is_a_delivery_status_report() -> None:
    raw = build_bounce(
        queue_id="Q1",
        bounce_id="B1",
        sender="s@example.org",
        hostname="mx.test",
        arrival=1e9,
        now=1.1e9,
        failed=[
            FailedRecipient("x@y.org", "550 5.1.1 <x@y.org>: User unknown", "relay.test"),
            FailedRecipient("z@y.org", "451 4.4.1 timeout\r\nforged: header", status="4.4.7"),
        ],
        original=b"Subject: hi\r\nX-Bad: \xff\xfe\r\n\r\nsecret body\r\n",
    )
    assert b"\r\n" in raw and b"secret body" not in raw, "headers only, never the body"
    report = email.message_from_bytes(raw, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert b"\r\nTo: <s@example.org>\r\n" in raw and report["Auto-Submitted"] == "auto-replied"
    text, status, headers = report.iter_parts()
    assert "550 5.1.1" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, first, second = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert first["Final-Recipient"] == "rfc822; x@y.org" and first["Status"] == "5.1.1"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <x@y.org>: User unknown"
    assert first["Remote-MTA"] == "dns; relay.test" and first["Action"] == "failed"
    assert second["Status"] == "4.4.7" and "forged" not in second
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"X-Bad: \xff\xfe" in raw
