"""A receive process with one session commits the session's messages in its own thread
(queue/inline.py); with more sessions open they go through the group commit; either way the
250 means the message is on disk: a SIGKILL right after it loses nothing."""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.support.kb import metric
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
BODY = b"Subject: inline\r\n\r\nhello\r\n"
ONE_RECEIVER = DEFAULT_CONFIG + "\n[processes]\nreceive = 1\n"


def commits(admin: int, path: str) -> float:
    return metric(admin, "mailgate_smtp_commits_total", path=path)


def test_one_session_commits_inline_and_more_through_the_group(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=ONE_RECEIVER)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    try:
        # The start-up probe's session is gone: this one is alone in its process.
        wait_for(lambda: metric(admin, "mailgate_smtp_sessions_open") == 0, 10, what="no session")
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as one:
            for _ in range(3):
                one.sendmail("s@example.org", [ALICE], BODY)
        # Inline when the writer lock is free that instant; the interchange process or the
        # master's heartbeat may hold it just then, and that message takes the group commit.
        wait_for(lambda: commits(admin, "inline") + commits(admin, "group") == 3, 10,
                 what="three commits counted")  # fmt: skip
        inline = commits(admin, "inline")
        assert inline >= 1, "a lone session commits in its own thread"
        with (
            smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as first,
            smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as second,
        ):
            first.sendmail("s@example.org", [ALICE], BODY)  # two sessions open: the group
            second.sendmail("s@example.org", [ALICE], BODY)
        wait_for(lambda: commits(admin, "inline") + commits(admin, "group") == 5, 10,
                 what="five commits counted")  # fmt: skip
        assert commits(admin, "inline") == inline, "never inline with two sessions open"
        paths = wait_for(
            lambda: len(p := mg.delivered("NET1", "PO1", "ALICE")) == 5 and p, 10,
            what="five deliveries",
        )  # fmt: skip
        assert len(paths) == 5
    finally:
        mg.close()


def test_an_inline_commit_survives_sigkill_after_its_250(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=ONE_RECEIVER)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        assert mg.cli("ctl", "pause", "postoffice").returncode == 0  # the queue keeps it
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            client.sendmail("s@example.org", [ALICE], BODY)
        mg.kill()  # SIGKILL, the whole process group, right after the 250
        mg.start()
        assert mg.cli("ctl", "resume", "postoffice").returncode == 0
        paths = wait_for(
            lambda: (p := mg.delivered("NET1", "PO1", "ALICE")) and p, 10, what="delivery"
        )
        assert paths[0].read_bytes().endswith(b"hello\n")
    finally:
        mg.close()
