"""Q247618: one corrupt message blocked all flow.

mailgate owes: no head-of-line blocking; a poison message is quarantined (event 2446)
and everything else is delivered. The poison here is a delivery that always raises,
or one that always hangs (the thread is reported stalled, its lease released, and
that attempt counts: the cap of [queue] max_internal_failures applies to it too).
Either way the 100 good messages sent with it arrive, and `queue delete` removes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kb import ALICE, POISON, busy_on, metric, queue, send, status, status_text
from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

CONFIG = (
    DEFAULT_CONFIG
    + """
[queue]
retry_min = "1s"
retry_max = "1s"
max_internal_failures = 3

[supervise]
stall_after = "1s"
stall_grace = "1s"
"""
)


@pytest.mark.parametrize("action", ["raise", "hang"])
def test_poison_among_a_hundred_is_quarantined_and_deleted(tmp_path: Path, action: str) -> None:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/POISON")
    admin = free_port()
    faults = {"MAILGATE_FAULTS": f"interchange.deliver[{POISON}]={action}"}
    mg.start("--admin-listen", f"127.0.0.1:{admin}", env=faults)
    try:
        first = send_many(mg.port, 50, ALICE, clients=2, prefix="a")
        poison_id = send(mg, ALICE, [POISON], b"Subject: poison\r\n\r\npoison\r\n")
        accepted = first + send_many(mg.port, 50, ALICE, clients=2, prefix="b")

        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE", timeout=30)
        [quarantined] = mg.wait_events(2446, timeout=30)
        assert quarantined["fields"]["queue_id"] == poison_id
        assert quarantined["fields"]["failures"] == 3
        assert not mg.delivered("NET1", "PO1", "POISON")
        if action == "hang":
            stalls = mg.events(5003)
            assert len(stalls) == 3, [s["fields"].get("thread") for s in stalls]
            assert busy_on(mg, POISON) is not None, "the hung thread is still stuck in it ..."
            wait_for(
                lambda: sum(t["alive"] for p in status(mg)["processes"] for t in p["threads"]
                            if t["role"] == "interchange" and t["state"] != "stalled") >= 2,
                15, 0.2, "... and has been replaced",
            )  # fmt: skip
        queues = status(mg)["queues"]["postoffice"]
        assert queues["quarantined"] == 1 and queues["length"] == 1, queues
        # What the administrator sees: the status line and the metric.
        assert (
            "queue postoffice: 1 waiting (queued 0, active 0, deferred 0, held 0, "
            "quarantined 1)" in status_text(mg)
        )
        series = {"connector": "postoffice", "state": "quarantined"}
        assert metric(admin, "mailgate_queue_recipients", **series) == 1

        assert queue(mg, "delete", poison_id)["deleted"] is True
        assert mg.cli("queue", "show", poison_id).returncode != 0
        wait_for(lambda: status(mg)["queues"]["postoffice"]["length"] == 0, 10, what="empty")
        late = send_many(mg.port, 5, ALICE, clients=1, prefix="c")
        assert_exactly_once(mg, accepted + late, "NET1", "PO1", "ALICE")
    finally:
        mg.close()
