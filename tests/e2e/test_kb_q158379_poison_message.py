"""Q158379: a message that could not be parsed crashed processing, and could not be deleted.

mailgate owes: an error while processing one message never escapes its delivery; the
message is quarantined with an event (2446) after [queue] max_internal_failures, the
mail around it flows, and an administrator can delete or bounce it. Here the damage
is real: the message's body row is removed from the queue file under the running
service, so every delivery attempt of it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kb import ALICE, BOB, bounces, plant, queue, report_blocks, send, status
from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

CONFIG = DEFAULT_CONFIG + '[queue]\nretry_min = "1s"\nretry_max = "1s"\nmax_internal_failures = 3\n'


@pytest.fixture
def mg(tmp_path: Path) -> Iterator[Mailgate]:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start()
    try:
        yield mg
    finally:
        mg.close()


def broken(mg: Mailgate, subject: str) -> str:
    """A message for BOB whose body row is gone from the queue before any attempt."""
    queue_id = send(mg, ALICE, [BOB], f"Subject: {subject}\r\n\r\nbroken\r\n".encode())
    plant(mg, "DELETE FROM bodies WHERE message_id = ?", (queue_id,))
    return queue_id


def test_message_without_its_body_is_quarantined_and_can_be_deleted_or_bounced(
    mg: Mailgate,
) -> None:
    assert mg.cli("ctl", "pause", "postoffice").returncode == 0  # damage it before any attempt
    doomed, returned = broken(mg, "doomed"), broken(mg, "returned")
    accepted = send_many(mg.port, 100, ALICE, clients=2)
    assert mg.cli("ctl", "resume", "postoffice").returncode == 0

    assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
    quarantined = mg.wait_events(2446, count=2, timeout=30)
    assert {e["fields"]["queue_id"] for e in quarantined} == {doomed, returned}
    failures = [e for e in mg.events(2450) if e["fields"]["queue_id"] == doomed]
    assert len(failures) == 3 and "missing from the queue" in failures[0]["message"]
    assert not mg.delivered("NET1", "PO1", "BOB")
    queues = status(mg)["queues"]["postoffice"]
    assert queues["quarantined"] == 2, queues

    deleted = queue(mg, "delete", doomed)
    assert deleted["deleted"] is True
    missing = mg.cli("queue", "show", doomed)
    assert missing.returncode != 0 and "no message" in missing.stderr
    assert mg.wait_events(4012)[0]["fields"]["queue_id"] == doomed

    assert queue(mg, "bounce", returned)["returned"] is True
    [report] = wait_for(lambda: bounces(mg), 15, what="the report of the returned message")
    [block] = report_blocks(report)
    assert str(block["Final-Recipient"]) == f"rfc822; {BOB}"
    wait_for(lambda: status(mg)["queues"]["postoffice"]["length"] == 0, 15, what="empty queue")
