"""A lone SMTP session's thread waits awake for the client's next command after each reply
([smtp] reply_linger, receive/linger.py), through the real service (two receive processes):
counted in mailgate_smtp_lingers_total; never while another session is open anywhere in
the instance, whichever worker has it; never with the setting at 0."""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.support.kb import metric
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
BODY = b"Subject: linger\r\n\r\nhello\r\n"


def lingers(admin: int) -> float:
    return metric(admin, "mailgate_smtp_lingers_total", outcome="bytes") + metric(
        admin, "mailgate_smtp_lingers_total", outcome="bound"
    )


def started(tmp_path: Path, config: str) -> tuple[Mailgate, int]:
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    # the start-up probe's session is gone before the test's own
    wait_for(lambda: metric(admin, "mailgate_smtp_sessions_open") == 0, 10, what="no session")
    return mg, admin


def test_a_lone_session_lingers_and_two_sessions_never_do(tmp_path: Path) -> None:
    mg, admin = started(tmp_path, DEFAULT_CONFIG)
    try:
        before = lingers(admin)
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as one:
            for _ in range(3):
                one.sendmail("s@example.org", [ALICE], BODY)
        wait_for(lambda: lingers(admin) >= before + 3, 10, what="the lone session's waits")
        with (
            smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as first,
            smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as second,
        ):
            # both admitted (each has its greeting) before either sends a command
            first.ehlo("first.test")
            second.ehlo("second.test")
            wait_for(lambda: metric(admin, "mailgate_smtp_sessions_open") == 2, 10,
                     what="two sessions open")  # fmt: skip
            alone = lingers(admin)
            for _ in range(3):
                first.sendmail("s@example.org", [ALICE], BODY)
                second.sendmail("s@example.org", [ALICE], BODY)
            first.noop()  # the counters are the workers' heartbeat's: give them a turn
            wait_for(lambda: metric(admin, "mailgate_smtp_commits_total", path="inline")
                     + metric(admin, "mailgate_smtp_commits_total", path="group")
                     + metric(admin, "mailgate_smtp_commits_total", path="inline-unlocked")
                     >= 9, 10, what="nine commits counted")  # fmt: skip
            assert lingers(admin) == alone, "no wait awake while another session is open"
        delivered = wait_for(
            lambda: len(p := mg.delivered("NET1", "PO1", "ALICE")) == 9 and p, 10,
            what="nine deliveries",
        )  # fmt: skip
        assert len(delivered) == 9
    finally:
        mg.close()


def test_no_linger_with_the_setting_at_zero(tmp_path: Path) -> None:
    mg, admin = started(tmp_path, DEFAULT_CONFIG + '\n[smtp]\nreply_linger = "0s"\n')
    try:
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as one:
            for _ in range(3):
                one.sendmail("s@example.org", [ALICE], BODY)
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 3, 10, what="deliveries")
        assert lingers(admin) == 0
    finally:
        mg.close()
