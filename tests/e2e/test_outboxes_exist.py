"""Issue "a day of administration", point 10: outboxes exist.

`mailgate mailbox add MS:NET/PO/MBX` creates the postoffice's outbox `NET/PO/outbox/` with
it, so a user following the README has somewhere to drop files; `mailgate mailbox list`
shows each postoffice's outbox and how many files wait in it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

PICKUP = DEFAULT_CONFIG + '\n[pickup]\ninterval = "0.2s"\nsettle = "0s"\n'


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_mailbox_add_creates_the_postoffice_outbox(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=PICKUP)
    address = mg.add_mailbox("MS:NET1/PO1/ALICE")
    outbox = mg.data_dir / "postoffice" / "NET1" / "PO1" / "outbox"
    assert outbox.is_dir() and not outbox.is_symlink()
    assert oct(os.stat(outbox).st_mode & 0o777) == "0o700", "only the owner may submit"
    mg.start()
    try:
        (outbox / "hello.eml").write_bytes(
            f"X-Sender: MS:NET1/PO1/ALICE\nX-Receiver: {address}\nSubject: dropped\n\nhi\n".encode()
        )
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="the dropped file")
        assert mg.wait_events(2444)
    finally:
        mg.close()


def test_mailbox_list_shows_each_outbox_and_its_waiting_files(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    for address in ("MS:NET1/PO1/ALICE", "MS:NET1/PO1/BOB", "MS:NET1/PO2/CAROL"):
        mg.add_mailbox(address)
    root = mg.data_dir / "postoffice"
    for name in ("a.eml", "b.eml", ".hidden"):
        (root / "NET1" / "PO1" / "outbox" / name).write_bytes(b"Subject: x\n\nx\n")
    lines = ok(mg.cli("mailbox", "list")).splitlines()
    assert f"MS:NET1/PO1\toutbox\t{root / 'NET1' / 'PO1' / 'outbox'}/\t2 waiting" in lines
    assert f"MS:NET1/PO2\toutbox\t{root / 'NET1' / 'PO2' / 'outbox'}/\t0 waiting" in lines
    assert lines[0].startswith("MS:NET1/PO1/ALICE\talice@"), "mailboxes are listed as before"
    po1 = lines.index(f"MS:NET1/PO1\toutbox\t{root / 'NET1' / 'PO1' / 'outbox'}/\t2 waiting")
    assert [line.split("\t")[0] for line in lines[: po1 + 1]] == [
        "MS:NET1/PO1/ALICE", "MS:NET1/PO1/BOB", "MS:NET1/PO1",
    ], "each postoffice's outbox follows its mailboxes"  # fmt: skip


def test_a_postoffice_created_before_outboxes_existed_gets_one(tmp_path: Path) -> None:
    """`mailbox list` says an outbox is missing; adding any mailbox to it creates it."""
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    outbox = mg.data_dir / "postoffice" / "NET1" / "PO1" / "outbox"
    outbox.rmdir()
    listed = ok(mg.cli("mailbox", "list"))
    assert "MS:NET1/PO1\toutbox\t-\tmissing (mailbox add creates it)" in listed
    mg.add_mailbox("MS:NET1/PO1/BOB")
    assert outbox.is_dir()
