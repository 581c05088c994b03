"""Q163020: a full mailbag turned into bounces.

mailgate owes: a full or failing destination defers (backpressure), it does not
bounce, and says so with an event. A mailbox over its quota ([postoffice] quota)
makes its mail wait (452 4.2.2, events 2376 and 2400) while other mailboxes go on
receiving; once its reader makes room, the waiting mail is delivered on the next
retry, and nobody got a bounce.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.kb import ALICE, BOB, bounces, recipient_states, send, status
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

CONFIG = (
    DEFAULT_CONFIG.replace("threads = 2", "threads = 2\nquota = 2000")
    + '\n[queue]\nretry_min = "1s"\nretry_max = "1s"\n'
)


def test_full_mailbox_defers_instead_of_bouncing_then_receives(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start()
    try:
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40
        send(mg, ALICE, [BOB], big)
        wait_for(lambda: mg.delivered("NET1", "PO1", "BOB"), 10, what="the first message")
        waiting = send(mg, ALICE, [BOB], b"Subject: next\r\n\r\nthe mailbag is full\r\n")
        [full] = mg.wait_events(2376)
        assert full["fields"]["queue_id"] == waiting and "over quota" in full["message"]
        deferred = mg.wait_events(2400, count=2)
        assert all("452 4.2.2" in e["message"] for e in deferred)
        assert recipient_states(mg, waiting) == {BOB: "deferred"}
        assert status(mg)["queues"]["postoffice"]["deferred"] == 1
        send(mg, BOB, [ALICE], b"Subject: others\r\n\r\nstill flowing\r\n")
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="mail to ALICE")

        # BOB's reader makes room the Maildir++ way (as Dovecot's expunge does): it removes
        # the file and appends the negative size to maildirsize. (A reader that only
        # unlinks is noticed when maildirsize, over quota, is 15 minutes old: the spec's rule.)
        box = mg.mailbox_dir("NET1", "PO1", "BOB")
        for path in mg.delivered("NET1", "PO1", "BOB"):
            size = path.stat().st_size
            path.unlink()
            with open(box / "maildirsize", "a") as quota:
                quota.write(f"{-size} -1\n")
        wait_for(lambda: recipient_states(mg, waiting) == {BOB: "delivered"}, 15, 0.2, "BOB")
        assert len(mg.delivered("NET1", "PO1", "BOB")) == 1
        assert not mg.events(2401) and not mg.events(2117), "nothing bounced"
        assert not bounces(mg, "ALICE") and not bounces(mg, "BOB")
    finally:
        mg.close()
