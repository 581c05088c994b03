"""A restart after a clean stop does not read every page of the queue again (issue 14.6).

SQLite's quick_check at start (Q159305) read the whole file on every start: with a
million queued messages (1 GB) that was 1.6 s of a restart from the page cache, and
more cold. A clean stop now records the file's identity (queue/cleanstop.py) and the
next start skips the check only while the file is exactly as that stop left it. Here,
on real services in both modes: a clean stop leaves a record that still matches once
every process has exited (nothing touches the file after it), and after a read-only
tool ran (it leaves an empty WAL, as SQLite does); a start removes it; a
service that is killed leaves none; and a file written after the clean stop, even with
its modification time put back, is checked (and, damaged, refused) again.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest

from mailgate.queue import cleanstop
from mailgate.queue.sqlite import SqliteBackend
from tests.e2e.test_kb_q159305_damaged_store import ALICE, damage_a_page
from tests.support.process import Mailgate, wait_for

MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]


def send(mg: Mailgate, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        for n in range(count):
            assert client.sendmail("s@example.org", [ALICE], f"Subject: m{n}\r\n\r\nx\r\n") == {}


@pytest.mark.parametrize("mode", MODES)
def test_a_clean_stop_vouches_for_the_file_until_anything_changes_it(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    db = mg.data_dir / "queue" / "queue.db"
    backend = SqliteBackend(db)
    record = db.with_name(db.name + cleanstop.SUFFIX)
    try:
        mg.start(*mode)
        assert not record.exists()
        assert mg.cli("ctl", "pause").returncode == 0
        send(mg, 5)
        assert mg.stop() == 0
        assert record.exists() and cleanstop.unchanged(backend), "the file as the stop left it"
        assert mg.cli("queue", "list").returncode == 0  # a reader leaves an empty WAL behind
        assert cleanstop.unchanged(backend), "reading it changes nothing"

        mg.start(*mode)
        assert not record.exists(), "a running service leaves no record behind it"
        send(mg, 1)
        mg.kill()
        assert not record.exists() and not cleanstop.unchanged(backend)

        mg.start(*mode)  # after the kill: checked, sound, started
        assert mg.stop() == 0 and cleanstop.unchanged(backend)
        before = os.stat(db)
        damage_a_page(db)
        os.utime(db, ns=(before.st_atime_ns, before.st_mtime_ns))  # the times put back...
        assert not cleanstop.unchanged(backend), "...but not the status-change time"
        mg.start(*mode, wait=False)
        assert mg.proc is not None
        assert mg.proc.wait(60) == 1, "a file changed since the clean stop is checked"
        wait_for(lambda: bool(mg.events(1002)), 10, what="ServiceFailed")
        assert "damaged" in mg.events(1002)[-1]["fields"]["reason"]
    finally:
        mg.close()
