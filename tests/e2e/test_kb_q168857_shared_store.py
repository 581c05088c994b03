"""Q168857: locked queue files stopped the service we replace from starting.

DESIGN §5 row 13: stale locks are found and cleared safely, and a second instance on the
same store is refused with a message naming the first. The data directory lock alone
does not do it: two services with different data directories and one `[queue] path`
both started, and the second, believing every lease stale, released the first's live
ones, so a message being delivered was delivered again. Here the first service is in
the middle of a delivery (held by a fault point) when the second is started.
"""

from __future__ import annotations

import json
import signal
import smtplib
from pathlib import Path

from tests.support.load import tokens
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"


def on_store(root: Path, store: Path) -> Mailgate:
    root.mkdir()
    config = DEFAULT_CONFIG + f'\n[queue]\npath = "{store}"\n'
    mg = Mailgate(root, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    return mg


def test_a_second_service_on_the_same_store_is_refused_naming_the_first(tmp_path: Path) -> None:
    store = tmp_path / "shared" / "queue.db"
    gate = tmp_path / "gate"
    first = on_store(tmp_path / "a", store)
    second = on_store(tmp_path / "b", store)
    first.start(
        env={"MAILGATE_FAULTS": "interchange.deliver=block:1", "MAILGATE_FAULTS_GATE": str(gate)}
    )
    try:
        assert first.proc is not None
        gate.touch()  # the next delivery waits here, its recipient leased to the first
        with smtplib.SMTP("127.0.0.1", first.port, timeout=10) as client:
            body = "Subject: once\r\nX-Token: once\r\n\r\nhi\r\n"
            assert client.sendmail("s@example.org", [ALICE], body) == {}
        wait_for(lambda: _leased(first), 10, what="the recipient leased by the first service")

        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(30) == 1, "the second service must not run on the same store"
        refused = second.events(1030)
        assert refused, second.stderr()
        fields = refused[0]["fields"]
        assert fields["pid"] == first.proc.pid, fields
        assert str(first.data_dir) in refused[0]["message"], refused[0]["message"]
        assert str(store) in refused[0]["message"], refused[0]["message"]
        assert not second.events(4000), "the second released leases it does not own"

        gate.unlink()
        wait_for(lambda: tokens(first, "NET1", "PO1", "ALICE"), 10, what="the delivery")
        assert tokens(first, "NET1", "PO1", "ALICE") == {"once": 1}
        assert not second.delivered("NET1", "PO1", "ALICE"), "delivered twice"
        assert first.stop() == 0
        # With the first gone, its lock goes with it: the second may take the store.
        second.start()
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(20) == 0
    finally:
        first.close()
        second.close()


def test_the_same_store_by_another_path_is_refused_too(tmp_path: Path) -> None:
    store = tmp_path / "shared" / "queue.db"
    first = on_store(tmp_path / "a", store)
    (tmp_path / "elsewhere").symlink_to(tmp_path / "shared")
    second = on_store(tmp_path / "b", tmp_path / "elsewhere" / "queue.db")
    first.start()
    try:
        second.start("--single-process", wait=False)
        assert second.proc is not None
        assert second.proc.wait(30) == 1
        assert second.events(1030), second.stderr()
        assert first.healthy()
    finally:
        first.close()
        second.close()


def _leased(mg: Mailgate) -> bool:
    result = mg.cli("ctl", "status", "--json")
    return (
        result.returncode == 0 and json.loads(result.stdout)["queues"]["postoffice"]["active"] == 1
    )
