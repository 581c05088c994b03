"""The README's promise: add a mailbox, send to the printed address, find it in new/ within 1 s."""

from __future__ import annotations

import smtplib
import subprocess
import time
from pathlib import Path

from tests.support.process import Mailgate, header, wait_for


def test_mailbox_add_then_send_arrives_within_a_second(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    try:
        mg.start()
        address = mg.add_mailbox("MS:LOCAL/MAIN/ALICE")  # while the service runs
        assert address == "alice@main.local.example.test"
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            refused = client.sendmail(
                "sender@example.org",
                [address],
                b"Subject: hello\r\nMessage-ID: <quick@test>\r\n\r\nHello Alice\r\n",
            )
        assert refused == {}
        files = wait_for(lambda: mg.delivered("LOCAL", "MAIN", "ALICE"), 1.0, what="delivery")
        assert time.monotonic() - started < 1.0
        assert len(files) == 1
        text = files[0].read_bytes()
        assert b"Hello Alice" in text
        assert header(files[0], "Return-Path") == "<sender@example.org>"
        assert header(files[0], "Received") is not None
        sent = wait_for(lambda: mg.events(2448), 5, what="Sent event")
        assert sent[0]["fields"]["recipient"] == address
        assert mg.stop() == 0
        assert mg.events(1001), "a clean stop writes ServiceStopped"
    finally:
        mg.close()


def test_swaks_delivers(mailgate: Mailgate, swaks: str) -> None:
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{mailgate.port}", "--to", "alice@po1.net1.example.test",
         "--from", "someone@example.org", "--header", "Subject: via swaks"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    files = wait_for(lambda: mailgate.delivered("NET1", "PO1", "ALICE"), 5, what="delivery")
    assert header(files[0], "Subject") == "via swaks"
