"""Q175965: the service crashed writing a non-delivery report for an invalid sender.

mailgate owes: no bounce to the null sender (event 2118 says so), and a failure while
building a report never crashes anything. Reports are built inside the queue commit
that records the outcome; a builder that raises there must cost one event (2120),
not the delivery thread and a redelivery of its whole batch. The message that owed
the report is kept, quarantined, for the administrator: `mailgate queue bounce`
sends the report once the cause is gone. A delay warning that cannot be built
(event 2121) must not take the scheduler down either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kb import ALICE, bounces, queue, recipient_states, report_blocks, send, status
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

FAST = '\n[queue]\nretry_min = "1s"\nretry_max = "1s"\n\n[smarthost]\nthreads = 1\n'
GONE = "gone@elsewhere.org"
OK = "ok@elsewhere.org"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        sink.fail("RCPT", f"550 5.1.1 <{GONE}>: no such user", address=GONE)
        yield sink


def relay(tmp_path: Path, sink: Sink, faults: str = "", extra: str = "") -> Mailgate:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST + extra)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}", env={"MAILGATE_FAULTS": faults})
    return mg


def test_no_bounce_goes_to_the_null_sender(tmp_path: Path, sink: Sink) -> None:
    mg = relay(tmp_path, sink)
    try:
        queue_id = send(mg, "", [GONE, OK], b"Subject: a bounce\r\n\r\nfrom <>\r\n")
        [dropped] = mg.wait_events(2118)
        assert dropped["fields"]["queue_id"] == queue_id
        assert dropped["fields"]["reason"] == "null sender"
        assert GONE in dropped["fields"]["failed"]
        assert recipient_states(mg, queue_id) == {GONE: "bounced", OK: "delivered"}
        assert [m.recipients for m in sink.wait_messages(1)] == [[OK]]
        assert not mg.events(2117), "no report was queued for anyone"
        assert not bounces(mg)
        assert status(mg)["healthy"]
    finally:
        mg.close()


def test_a_failing_report_builder_costs_one_event_not_a_redelivery(
    tmp_path: Path, sink: Sink
) -> None:
    mg = relay(tmp_path, sink, "dsn.build=raise:1")
    try:
        # One message: OK is delivered and GONE refused in the same attempt, so a
        # redelivery of the batch would show at the sink as a second copy for OK.
        queue_id = send(mg, ALICE, [GONE, OK], b"Subject: doomed\r\n\r\nhalf of it\r\n")
        assert [m.recipients for m in sink.wait_messages(1)] == [[OK]]
        # Kept for the administrator, not lost and not redelivered.
        wanted = {GONE: "quarantined", OK: "delivered"}
        wait_for(lambda: recipient_states(mg, queue_id) == wanted, 10, 0.2, "the outcome kept")
        assert not mg.events(2380), "no thread died"
        [failed] = mg.wait_events(2120)
        assert failed["fields"]["queue_id"] == queue_id
        assert "InjectedFault" in failed["fields"]["error"]
        assert not mg.events(4000), "no lease was left to release"
        assert len(mg.events(2120)) == 1
        assert len(sink.messages) == 1 and not bounces(mg)
        assert status(mg)["queues"]["smarthost"]["quarantined"] == 1

        assert queue(mg, "bounce", queue_id)["returned"] is True  # the cause is gone now
        [report] = wait_for(lambda: bounces(mg), 15, what="the report, sent on request")
        assert [str(b["Final-Recipient"]) for b in report_blocks(report)] == [f"rfc822; {GONE}"]
        assert len(sink.messages) == 1
    finally:
        mg.close()


def test_a_failing_delay_warning_costs_one_event_not_the_scheduler(
    tmp_path: Path, sink: Sink
) -> None:
    sink.fail("RCPT", "451 4.2.1 busy, try later", address="slow@elsewhere.org")
    mg = relay(tmp_path, sink, "dsn.build=raise:1", '\n[dsn]\ndelay_warning = "1s"\n')
    try:
        send(mg, ALICE, ["slow@elsewhere.org"], b"Subject: slow\r\n\r\nslow\r\n")
        mg.wait_events(2400, count=4)  # still retried, past the delay warning's time
        assert not mg.events(2380), "the scheduler did not die"
        [failed] = mg.wait_events(2121, timeout=20)
        assert "InjectedFault" in failed["fields"]["error"]
        assert not bounces(mg) and not mg.events(2119), "the warning is given up, not retried"
        assert status(mg)["healthy"]
    finally:
        mg.close()
