"""Q159305: queue database errors crashed the service we replace.

DESIGN §5 row 6: a corrupt store is found at start with a clear message, and
`mailgate queue check` says what is wrong. A file that is not SQLite at all was already
refused; here one b-tree page of a real queue is damaged (its header overwritten, as a
torn write or a bad sector leaves it), which opening the file does not notice. The
service must refuse to start (event 1002 naming the file and what to run), `queue
check` must report the damage and what to do, and doing what it says must work.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.process import Mailgate, wait_for
from tests.support.tools import require

ALICE = "alice@po1.net1.example.test"
MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]


def queue_with_mail(tmp_path: Path) -> Mailgate:
    """A stopped service whose queue holds 40 undelivered messages, checkpointed."""
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    assert mg.cli("ctl", "pause").returncode == 0  # keep them queued, bodies and all
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        for n in range(40):
            body = f"Subject: m{n}\r\n\r\n" + ("x" * 70 + "\r\n") * 30
            assert client.sendmail("s@example.org", [ALICE], body) == {}
    assert mg.stop() == 0
    return mg


def damage_a_page(db: Path) -> int:
    """Overwrite the b-tree header of an index's root page; the page's number."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page = conn.execute(
            "SELECT max(rootpage) FROM sqlite_master WHERE type = 'index'"
        ).fetchone()[0]
    assert page > 1
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xff" * 12)  # 0xff is no b-tree page type
        os.fsync(f.fileno())
    return int(page)


@pytest.mark.parametrize("mode", MODES)
def test_a_damaged_page_is_refused_at_start_and_queue_check_says_what_to_do(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    mg = queue_with_mail(tmp_path)
    db = mg.data_dir / "queue" / "queue.db"
    damage_a_page(db)

    mg.start(*mode, wait=False)
    assert mg.proc is not None
    assert mg.proc.wait(60) == 1, "a damaged queue must stop the start"
    failed = mg.events(1002)
    assert failed, "no ServiceFailed event"
    reason = failed[-1]["fields"]["reason"]
    assert str(db) in reason and "damaged" in reason, reason
    assert "mailgate queue check" in reason, reason

    check = mg.cli("queue", "check")
    assert check.returncode == 1, check.stdout + check.stderr
    out = check.stdout
    assert "damage" in out and str(db) in out, out
    assert "what to do" in out and ".recover" in out, out

    require("sqlite3")
    # Do what it says, as it says it: steps 2 and 3 are shell commands.
    for step in ("2. Copy out what can be read: ", "3. Put the copy in place: "):
        line = next(s for s in out.splitlines() if s.strip().startswith(step))
        command = line.strip().removeprefix(step)
        done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    assert mg.cli("queue", "check").returncode == 0
    mg.start(*mode)
    assert mg.cli("ctl", "resume").returncode == 0
    # The damaged page was an index's: every message is still there.
    wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 40, 20, what="all 40 back")
    assert mg.stop() == 0
