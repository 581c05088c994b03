"""Q237182: a temporary failure was retried forever.

mailgate owes: a maximum queue lifetime ([queue] max_lifetime), then a bounce
(status 5.4.7) with the last error. Not only when an attempt fails temporarily: a
recipient that is never claimed (its connector paused) or whose every attempt ends
without an outcome (released again and again) expires too, found by the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kb import ALICE, POISON, bounces, metric, recipient_states, report_blocks, send
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import Sink

FAR = "slow@elsewhere.org"
LIFETIME = 3.0


def config(extra: str = "") -> str:
    return (
        DEFAULT_CONFIG
        + f'\n[queue]\nretry_min = "1s"\nretry_max = "1s"\nmax_lifetime = "{LIFETIME:g}s"\n'
        + extra
        + '\n[smarthost]\nthreads = 1\ndown_for = "1s"\n'
    )


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


def expired_report(mg: Mailgate, address: str) -> str:
    """Wait for the sender's report on `address`; its Diagnostic-Code."""
    [report] = wait_for(lambda: bounces(mg), 20, 0.1, "the expiry report to the sender")
    [block] = report_blocks(report)
    assert str(block["Final-Recipient"]) == f"rfc822; {address}"
    assert block["Status"] == "5.4.7", block["Status"]
    return str(block["Diagnostic-Code"])


def test_temporary_failure_is_retried_then_bounced_at_max_lifetime(
    tmp_path: Path, sink: Sink
) -> None:
    sink.fail("RCPT", "451 4.2.1 mailbox busy, try later", address=FAR)
    mg = Mailgate(tmp_path, config=config())
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{sink.port}")
    try:
        queue_id = send(mg, ALICE, [FAR], b"Subject: slow\r\n\r\nslow\r\n")
        diagnostic = expired_report(mg, FAR)
        assert "expired" in diagnostic and "451 4.2.1 mailbox busy" in diagnostic
        assert len(mg.events(2400)) >= 2, "retried with back-off before it expired"
        assert recipient_states(mg, queue_id) == {FAR: "bounced"}
        assert not sink.messages
    finally:
        mg.close()


def test_recipient_never_claimed_expires(tmp_path: Path, sink: Sink) -> None:
    mg = Mailgate(tmp_path, config=config())
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start("--smarthost", f"127.0.0.1:{sink.port}", "--admin-listen", f"127.0.0.1:{admin}")
    try:
        assert mg.cli("ctl", "pause", "smarthost").returncode == 0  # nobody claims it
        queue_id = send(mg, ALICE, [FAR], b"Subject: paused\r\n\r\nnever tried\r\n")
        diagnostic = expired_report(mg, FAR)
        assert "expired" in diagnostic and "never attempted" in diagnostic
        assert recipient_states(mg, queue_id) == {FAR: "bounced"}
        [bounced] = mg.wait_events(2401)
        assert bounced["fields"]["recipient"] == FAR and "expired" in bounced["message"]
        assert not mg.events(2400) and not sink.messages
        wait_for(lambda: metric(admin, "mailgate_expired_total", connector="smarthost") == 1,
                 5, 0.2, "the expiry counted")  # fmt: skip
    finally:
        mg.close()


def test_recipient_always_released_expires(tmp_path: Path) -> None:
    # Every attempt hangs until its 1 s lease runs out; the cap on such attempts is far
    # away, so only the lifetime can end it.
    extra = 'lease = "1s"\nmax_internal_failures = 100\n[supervise]\nstall_after = "120s"\n'
    mg = Mailgate(tmp_path, config=config(extra).replace("threads = 2", "threads = 8"))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/POISON")
    mg.start(env={"MAILGATE_FAULTS": f"interchange.deliver[{POISON}]=hang"})
    try:
        queue_id = send(mg, ALICE, [POISON], b"Subject: hangs\r\n\r\nalways released\r\n")
        wait_for(lambda: recipient_states(mg, queue_id) == {POISON: "bounced"}, 20, 0.2,
                 "the always-released recipient to expire")  # fmt: skip
        [bounced] = mg.wait_events(2401)
        assert "expired" in bounced["message"] and "without an outcome" in bounced["message"]
        diagnostic = expired_report(mg, POISON)
        assert "expired" in diagnostic
        assert len(mg.events(4000)) >= 2, "its leases ran out and were released first"
    finally:
        mg.close()
