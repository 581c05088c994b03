"""Q243701: an address that could not be resolved stuck the queue at every restart.

mailgate owes: unroutable means bounce, at once. Mail queued for a connector that a
later configuration no longer has (a restart without `--smarthost`, a reload whose
routes no longer use it) is never claimed by anyone; so the scheduler re-routes such
waiting recipients by the current rules, or bounces them when no rule routes them,
with event 4040. Nothing is left waiting for a connector that does not exist.
"""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

from tests.support.kb import (
    ALICE,
    BOB,
    bounces,
    metric,
    queue,
    recipient_states,
    report_blocks,
    send,
)
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

FAST = '\n[queue]\nretry_min = "1s"\nretry_max = "2s"\n\n[smarthost]\nthreads = 1\n'
FAR = "far@elsewhere.org"


def deferred_at_a_dead_smarthost(mg: Mailgate, rcpts: list[str]) -> str:
    """Queue a message whose recipients wait for a smarthost nobody answers at."""
    queue_id = send(mg, ALICE, rcpts, b"Subject: waiting\r\n\r\nfor the smarthost\r\n")
    mg.wait_events(2400)
    return queue_id


def rerouted(mg: Mailgate) -> list[dict[str, object]]:
    return mg.wait_events(4040, timeout=15)


def test_restart_without_the_smarthost_bounces_what_waited_for_it(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--smarthost", f"127.0.0.1:{free_port()}")
    try:
        queue_id = deferred_at_a_dead_smarthost(mg, [FAR])
        assert mg.stop() == 0
        admin = free_port()
        mg.start("--admin-listen", f"127.0.0.1:{admin}")  # the smarthost is gone now
        [report] = wait_for(lambda: bounces(mg), 15, what="the report to the sender")
        [event] = rerouted(mg)
        assert event["fields"]["connector"] == "smarthost"
        assert event["fields"]["bounced"] == 1 and event["fields"]["rerouted"] == 0
        [block] = report_blocks(report)
        assert str(block["Final-Recipient"]) == f"rfc822; {FAR}"
        assert block["Status"] == "5.4.4"
        assert "no longer configured" in block["Diagnostic-Code"]
        assert recipient_states(mg, queue_id) == {FAR: "bounced"}
        assert not queue(mg, "list"), "nothing is left in the queue"
        series = {"connector": "smarthost", "outcome": "bounced"}
        wait_for(lambda: metric(admin, "mailgate_rerouted_total", **series) == 1, 5, 0.2, "count")
    finally:
        mg.close()


def test_restart_with_new_routes_reroutes_what_waited(tmp_path: Path) -> None:
    # BOB's mail first goes to a smarthost (a migration, say); later routes deliver it here.
    routes = (
        '\n[[route]]\nmatch = "MS:NET1/PO1/BOB"\nconnector = "smarthost"\n'
        '\n[[route]]\nmatch = "MS:*/*/*"\nconnector = "postoffice"\n'
    )
    smarthost = f'host = "127.0.0.1"\nport = {free_port()}\n'
    mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + FAST + smarthost + routes)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start()
    try:
        queue_id = deferred_at_a_dead_smarthost(mg, [BOB])
        assert mg.stop() == 0
        mg.config_path.write_text(DEFAULT_CONFIG + FAST)  # default routes, no smarthost
        mg.start()
        wait_for(lambda: mg.delivered("NET1", "PO1", "BOB"), 15, what="BOB's mail, re-routed")
        [event] = rerouted(mg)
        assert event["fields"]["rerouted"] == 1 and event["fields"]["bounced"] == 0
        assert "postoffice" in event["message"]
        assert recipient_states(mg, queue_id) == {BOB: "delivered"}
        assert not bounces(mg)
    finally:
        mg.close()


def test_reload_whose_routes_drop_the_smarthost_bounces_what_waited(tmp_path: Path) -> None:
    # In the file, not `--smarthost` (which adds its catch-all route to every reload).
    config = DEFAULT_CONFIG + FAST + f'host = "127.0.0.1"\nport = {free_port()}\n'
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        queue_id = deferred_at_a_dead_smarthost(mg, [FAR])
        only_local = '\n[[route]]\nmatch = "MS:*/*/*"\nconnector = "postoffice"\n'
        mg.config_path.write_text(config + only_local)
        assert mg.proc is not None
        mg.proc.send_signal(signal.SIGHUP)
        mg.wait_events(1101)
        wait_for(lambda: recipient_states(mg, queue_id) == {FAR: "bounced"}, 15, 0.2, "bounce")
        [event] = rerouted(mg)
        assert event["fields"]["connector"] == "smarthost" and event["fields"]["bounced"] == 1
        [report] = wait_for(lambda: bounces(mg), 15, what="the report to the sender")
        assert str(report_blocks(report)[0]["Final-Recipient"]) == f"rfc822; {FAR}"
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail(ALICE)
            assert client.rcpt(FAR)[0] == 554, "new mail for it is refused at RCPT"
    finally:
        mg.close()
