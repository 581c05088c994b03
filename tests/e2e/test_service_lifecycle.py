"""Starting, refusing to start, failing storage, stopping: the contract with the operator."""

from __future__ import annotations

import contextlib
import smtplib
import sqlite3
import subprocess
from pathlib import Path

from tests.support.fs import fill, small_filesystem
from tests.support.process import DEFAULT_CONFIG, Mailgate, running, wait_for

ALICE = "alice@po1.net1.example.test"


def send(mg: Mailgate, body: bytes = b"Subject: t\r\n\r\nhello\r\n") -> tuple[int, bytes]:
    """Send one message to ALICE; the (code, text) of the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("sender@example.org")
        client.rcpt(ALICE)
        return client.data(body)


def queued_messages(mg: Mailgate) -> int:
    with contextlib.closing(sqlite3.connect(mg.data_dir / "queue" / "queue.db")) as db:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def test_second_instance_is_refused_naming_the_first(mailgate: Mailgate) -> None:
    assert mailgate.proc is not None
    result = subprocess.run(
        mailgate.command(
            "run", "--config", str(mailgate.config_path), "--data-dir", str(mailgate.data_dir),
            "--listen", "127.0.0.1:0",
        ),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"pid {mailgate.proc.pid}" in result.stderr
    assert mailgate.events(1003)
    assert send(mailgate)[0] == 250, "the first instance keeps serving"


def test_stale_lock_of_a_killed_service_is_taken_over(mailgate: Mailgate) -> None:
    mailgate.kill()
    lock = mailgate.data_dir / "mailgate.pid"
    assert lock.read_text().strip().isdigit(), "the killed process left its PID behind"
    mailgate.start()
    assert mailgate.proc is not None
    assert lock.read_text().strip() == str(mailgate.proc.pid)


def test_clean_stop_exits_zero_with_an_event(mailgate: Mailgate) -> None:
    assert send(mailgate)[0] == 250
    assert mailgate.stop() == 0
    stopped = mailgate.events(1001)
    assert stopped and "SIGTERM" in stopped[-1]["message"]


def test_storage_failure_answers_451_and_keeps_nothing(tmp_path: Path) -> None:
    # Fault counters are per process: one receive process, so exactly one insert fails.
    with running(tmp_path, config=DEFAULT_CONFIG + "\n[processes]\nreceive = 1\n") as mg:
        mg.add_mailbox("MS:NET1/PO1/ALICE")
        mg.start(env={"MAILGATE_FAULTS": "queue.insert=raise:1"})
        code, text = send(mg)
        assert code == 451 and text.startswith(b"4.3.0"), (code, text)
        assert queued_messages(mg) == 0, "the failed message left rows behind"
        assert mg.wait_events(3001), "ReceiveStoreFailed event"
        assert send(mg)[0] == 250, "the next message is accepted"
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 5, what="delivery")
        assert len(mg.delivered("NET1", "PO1", "ALICE")) == 1


def test_full_disk_answers_452_then_recovers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "4m") as small:
        # Queue and postoffice on the small disk; the event log where it can still be written.
        log_dir = tmp_path / "log"
        config = DEFAULT_CONFIG + f'\n[log]\ndir = "{log_dir}"\n'
        mg = Mailgate(tmp_path, config=config, data_dir=small / "var")
        mg.log_dir = log_dir
        try:
            mg.add_mailbox("MS:NET1/PO1/ALICE")
            mg.start()
            assert send(mg)[0] == 250
            filler = fill(small)
            big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 300
            code, text = send(mg, big)
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            assert mg.wait_events(3001)
            filler.unlink()
            assert send(mg, big)[0] == 250, "accepted again once space is free"
            wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 2, 10, what="delivery")
        finally:
            mg.close()


def test_invalid_config_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + "\n[smtp]\nmax_recipients = 0\nbogus = 1\n")
    mg.start(wait=False)
    assert mg.proc is not None
    assert mg.proc.wait(30) == 2
    err = mg.stderr()
    assert "smtp.max_recipients" in err and "smtp.bogus: unknown key" in err
