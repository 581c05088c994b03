"""A receive worker whose SMTP loop stays wedged is ended by the master and restarted.

The SMTP loop is a critical thread its own supervisor never replaces (a second loop on the
same listening socket would have it closed under it), and the worker's channel thread keeps
heart-beating, so before this the master kept an unhealthy worker forever. Now a stall of
such a thread past [supervise] stall_grace, as the worker's heartbeat reports it, makes the
master end the worker with SIGKILL (event 5030), then restart it within its budget (5011,
5010); the port never closes, and the next client is served by the new worker. The loop is
wedged by the `receive.loop` fault point, armed by a gate file only for the first worker.
"""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path
from typing import Any

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"
CONFIG = (
    DEFAULT_CONFIG
    + '\n[supervise]\nstall_after = "2s"\nstall_grace = "4s"\n\n[processes]\nreceive = 1\n'
)


def smtp_events(mg: Mailgate, event_id: int) -> list[dict[str, Any]]:
    """Events `event_id` about the smtp thread (under load, others may stall for a moment)."""
    return [e for e in mg.events(event_id) if e["fields"]["thread"] == "smtp"]


def test_a_worker_whose_smtp_loop_stays_stalled_is_killed_and_restarted(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    env = {"MAILGATE_FAULTS": "receive.loop=block", "MAILGATE_FAULTS_GATE": str(gate)}
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(env=env)
    try:
        [started] = wait_for(
            lambda: [e for e in mg.events(5010) if e["fields"]["worker"] == "receive-1"],
            10,
            what="receive-1 started",
        )
        gate.touch()  # the next connection wedges receive-1's loop
        answers: list[object] = []

        def send_into_the_wedged_loop() -> None:
            try:
                with smtplib.SMTP("127.0.0.1", mg.port, timeout=60) as client:
                    answers.append(client.sendmail("s@example.org", [ALICE], "Subject: 1\r\n\r\n"))
            except (OSError, smtplib.SMTPException) as exc:
                answers.append(exc)

        sender = threading.Thread(target=send_into_the_wedged_loop)
        sender.start()
        wait_for(lambda: smtp_events(mg, 5003), 20, what="ThreadStalled for smtp")
        [stuck] = wait_for(lambda: smtp_events(mg, 5030), 30, what="WorkerStuck for smtp")
        fields = stuck["fields"]
        assert fields["worker"] == "receive-1" and fields["role"] == "receive", fields
        assert fields["pid"] == started["fields"]["pid"], fields
        assert fields["grace"] == 4 and fields["seconds"] >= 4, "stalled past the grace"
        gate.unlink()  # the replacement's loop is left alone
        [exited] = wait_for(
            lambda: [e for e in mg.events(5011) if e["fields"]["pid"] == fields["pid"]],
            20,
            what="WorkerExited for the stuck one",
        )
        assert "SIGKILL" in exited["fields"]["how"], exited["fields"]
        wait_for(
            lambda: len([e for e in mg.events(5010) if e["fields"]["worker"] == "receive-1"]) >= 2,
            20,
            what="receive-1 started again",
        )
        sender.join(60)
        assert len(answers) == 1 and isinstance(answers[0], Exception), "never answered 250"
        with smtplib.SMTP("127.0.0.1", mg.port, timeout=30) as client:
            assert client.sendmail("s@example.org", [ALICE], "Subject: 2\r\n\r\nhi\r\n") == {}
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 20, what="the delivery")
        assert len(smtp_events(mg, 5030)) == 1, "killed once"
        assert mg.stop() == 0
    finally:
        mg.close()
