"""`mailgate ctl loglevel` changes what is written, live, in every process, without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.load import send_many
from tests.support.process import Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"


@pytest.mark.parametrize("mode", [(), ("--single-process",)], ids=["workers", "single"])
def test_loglevel_live(tmp_path: Path, mode: tuple[str, ...]) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(*mode)
    try:
        send_many(mg.port, 2, ALICE, clients=1, prefix="a")
        mg.wait_events(2448, count=2)  # Sent is written (the test config sets maximum)
        result = mg.cli("ctl", "loglevel", "Sent", "medium")
        assert result.returncode == 0 and "Sent: medium" in result.stdout, result.stderr
        send_many(mg.port, 3, ALICE, clients=1, prefix="b")
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 5, 10, what="delivery")
        mg.wait_events(3000, count=5)  # received events still come (another category)
        assert len(mg.events(2448)) == 2, "Sent no longer written at medium"
        assert mg.cli("ctl", "loglevel", "Sent", "maximum").returncode == 0
        send_many(mg.port, 1, ALICE, clients=1, prefix="c")
        mg.wait_events(2448, count=3)
        assert mg.proc is not None and mg.proc.poll() is None, "no restart happened"
    finally:
        mg.close()
