"""Issue "a day of administration", point 8: an administrator's command always takes effect.

`mailgate queue hold|delete|bounce ID` on a message being delivered right now revokes the
thread's lease, cancels the attempt in flight (or discards its outcome when it returns),
says what it did, and writes an event naming the thread; nothing reaches a destination
twice because of it. The smarthost hangs for real (an aiosmtpd sink that does not answer
MAIL until released); the postoffice delivery is blocked at a fault point just before (or
just after) it links the file into the mailbox.
"""

from __future__ import annotations

import email
import json
import re
import smtplib
import subprocess
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.sink import Sink

ALICE = "alice@po1.net1.example.test"
BOB = "bob@po1.net1.example.test"
FRIEND = "friend@elsewhere.org"
OTHER = "other@elsewhere.org"


def config(port: int) -> str:
    return DEFAULT_CONFIG + (
        '\n[queue]\nretry_min = "1h"\nretry_max = "2h"\n'
        f'\n[smarthost]\nhost = "127.0.0.1"\nport = {port}\nthreads = 1\n'
    )


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


def send(mg: Mailgate, rcpt: str, subject: str) -> str:
    """Send one message; its queue id, from the 250 reply to DATA."""
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(ALICE)
        assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(f"Subject: {subject}\r\nX-Token: {subject}\r\n\r\nx\r\n")
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def shown(mg: Mailgate, queue_id: str) -> dict[str, Any]:
    return json.loads(ok(mg.cli("queue", "show", queue_id, "--json")))  # type: ignore[no-any-return]


def state(mg: Mailgate, queue_id: str) -> str:
    return str(shown(mg, queue_id)["recipients"][0]["state"])


def subjects(sink: Sink) -> list[str]:
    found = []
    for message in sink.messages:
        parsed = email.message_from_bytes(message.content, policy=policy.default)
        found.append(str(parsed["Subject"]))
    return found


def hung(mg: Mailgate, sink: Sink, subject: str) -> str:
    """A message whose smarthost attempt is in progress, hung on MAIL."""
    sink.hang("MAIL")
    queue_id = send(mg, FRIEND, subject)
    wait_for(lambda: sink.hanging == 1, 15, what="the smarthost session hung on MAIL")
    assert state(mg, queue_id) == "active"
    return queue_id


def revoked_event(mg: Mailgate, queue_id: str, command: str) -> dict[str, Any]:
    [event] = [e for e in mg.wait_events(4020) if e["fields"]["queue_id"] == queue_id]
    assert event["fields"]["command"] == command
    return event  # type: ignore[no-any-return]


def test_hold_of_a_message_being_delivered_takes_effect(tmp_path: Path, sink: Sink) -> None:
    """Under the master (worker processes): the hold is not refused; the attempt in flight
    is cancelled; released later, the message reaches the smarthost exactly once."""
    mg = Mailgate(tmp_path, config=config(sink.port))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        stuck = hung(mg, sink, "stuck")
        out = ok(mg.cli("queue", "hold", stuck))
        assert f"{stuck}: 1 recipient(s) held; an attempt in progress on smarthost-1 was " in out
        assert "cancelled" in out
        event = revoked_event(mg, stuck, "hold")
        assert event["fields"]["thread"] == "smarthost-1"
        assert event["fields"]["recipient"] == FRIEND
        assert "smarthost-1" in event["message"] and "cancelled" in event["message"]
        assert mg.wait_events(2463)[0]["fields"]["thread"] == "smarthost-1"
        assert state(mg, stuck) == "held"

        sink.release()  # the smarthost answers again: the cancelled attempt is gone
        send(mg, OTHER, "control-1")
        sink.wait_messages(1)
        assert subjects(sink) == ["control-1"], "the held message was not delivered"

        assert "1 recipient(s) released" in ok(mg.cli("queue", "release", stuck))
        sink.wait_messages(2)
        send(mg, OTHER, "control-2")
        sink.wait_messages(3)
        assert subjects(sink) == ["control-1", "stuck", "control-2"], "exactly once"
        assert state(mg, stuck) == "delivered"
        assert not mg.events(2460), "a cancelled attempt does not mark the smarthost down"
    finally:
        mg.close()


@pytest.mark.parametrize("command", ["delete", "bounce"])
def test_delete_or_bounce_of_a_message_being_delivered_takes_effect(
    tmp_path: Path, sink: Sink, command: str
) -> None:
    mg = Mailgate(tmp_path, config=config(sink.port))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--single-process")
    try:
        stuck = hung(mg, sink, "stuck")
        out = ok(mg.cli("queue", command, stuck))
        assert "an attempt in progress on smarthost-1 was cancelled" in out
        assert (f"{stuck}: deleted" if command == "delete" else f"{stuck}: returned") in out
        assert revoked_event(mg, stuck, command)["fields"]["thread"] == "smarthost-1"
        if command == "delete":
            assert mg.cli("queue", "show", stuck).returncode == 1, "gone"
        else:
            report = wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="report")
            assert b"returned by the administrator" in report[0].read_bytes()
            assert state(mg, stuck) == "bounced"

        sink.release()
        send(mg, OTHER, "control")
        sink.wait_messages(1)
        assert subjects(sink) == ["control"], f"the {command}d message was not delivered"
    finally:
        mg.close()


def paused_at(tmp_path: Path, point: str) -> tuple[Mailgate, Path]:
    """A service whose first postoffice delivery blocks at fault `point` while `gate` exists."""
    gate = tmp_path / "gate"
    gate.touch()
    mg = Mailgate(tmp_path, config=config(1))  # no smarthost in these tests
    mg.add_mailbox("MS:NET1/PO1/BOB")
    env = {"MAILGATE_FAULTS": f"{point}=block:1", "MAILGATE_FAULTS_GATE": str(gate)}
    mg.start("--single-process", env=env)
    return mg, gate


def command_during_pause(
    mg: Mailgate, gate: Path, point: str, *args: str
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run `mailgate queue ARGS QUEUE-ID` while a postoffice delivery to BOB is blocked at
    `point`; let the delivery go on once the service has been told to cancel it."""
    queue_id = send(mg, BOB, "local")
    # Before the link the file is written in tmp/; after it, it is in new/.
    sub = "tmp" if point == "postoffice.link" else "new"
    box = mg.mailbox_dir("NET1", "PO1", "BOB") / sub
    wait_for(lambda: list(box.iterdir()), 15, what=f"the delivery to reach {point}")
    where = ("--config", str(mg.config_path), "--data-dir", str(mg.data_dir))
    proc = subprocess.Popen(
        mg.command("queue", *args, queue_id, *where),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mg.env,
    )  # fmt: skip
    try:
        wait_for(lambda: mg.events(2463), 15, what="the service cancelling the attempt")
    finally:
        gate.unlink()
    stdout, stderr = proc.communicate(timeout=30)
    return queue_id, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_hold_during_a_postoffice_delivery_cancels_it_before_the_mailbox(tmp_path: Path) -> None:
    mg, gate = paused_at(tmp_path, "postoffice.link")
    try:
        local, result = command_during_pause(mg, gate, "postoffice.link", "hold")
        out = ok(result)
        assert re.search(r"1 recipient\(s\) held; an attempt in progress on postoffice-\d "
                         r"was cancelled", out), out  # fmt: skip
        assert "cancelled" in revoked_event(mg, local, "hold")["message"]
        box = mg.mailbox_dir("NET1", "PO1", "BOB")
        assert mg.delivered("NET1", "PO1", "BOB") == [] and not list(box.joinpath("tmp").iterdir())
        assert state(mg, local) == "held"

        ok(mg.cli("queue", "release", local))
        wait_for(lambda: state(mg, local) == "delivered", 10, what="the released delivery")
        send(mg, BOB, "control")
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "BOB")) == 2, 10, what="control mail")
        assert len(mg.delivered("NET1", "PO1", "BOB")) == 2, "the held message exactly once"
    finally:
        mg.close()


@pytest.mark.parametrize("command", ["hold", "delete"])
def test_a_postoffice_delivery_that_linked_the_file_is_reported_delivered(
    tmp_path: Path, command: str
) -> None:
    """The attempt in flight had already put the file in the mailbox: that is a delivery
    that happened. The command says so, the queue records it, and nothing is repeated."""
    mg, gate = paused_at(tmp_path, "postoffice.linked")
    try:
        local, result = command_during_pause(mg, gate, "postoffice.linked", command)
        out = ok(result)
        assert f"<{BOB}> was already delivered by an attempt in progress on postoffice-" in out
        assert "(250 2.0.0 delivered to MS:NET1/PO1/BOB)" in out, out
        event = revoked_event(mg, local, command)
        assert event["fields"]["fate"] == "delivered" and "already delivered" in event["message"]
        if command == "hold":
            assert "0 recipient(s) held" in out
            assert state(mg, local) == "delivered"
            assert "0 recipient(s) released" in ok(mg.cli("queue", "release", local))
        else:
            assert f"{local}: deleted" in out
            assert mg.cli("queue", "show", local).returncode == 1
        send(mg, BOB, "control")
        wait_for(lambda: len(mg.delivered("NET1", "PO1", "BOB")) == 2, 10, what="control mail")
        assert len(mg.delivered("NET1", "PO1", "BOB")) == 2, "one copy of the message, no more"
        assert ok(mg.cli("queue", "check")).strip().endswith(": ok")
    finally:
        mg.close()


def test_hold_of_a_message_leased_by_a_killed_service_takes_effect(
    tmp_path: Path, sink: Sink
) -> None:
    """The service died (SIGKILL) holding the lease: no one can cancel the attempt, and
    no one needs to. The hold takes effect and says so; a restarted service leaves the
    message held until it is released, then delivers it once."""
    mg = Mailgate(tmp_path, config=config(sink.port))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--single-process")
    try:
        stuck = hung(mg, sink, "stuck")
        mg.kill()
        out = ok(mg.cli("queue", "hold", stuck))
        assert "1 recipient(s) held; the lease of smarthost-1 was revoked (no service is " in out
        assert revoked_event(mg, stuck, "hold")["fields"]["fate"] == "orphaned"
        sink.release()
        mg.start("--single-process")
        send(mg, OTHER, "control")
        sink.wait_messages(1)
        assert state(mg, stuck) == "held" and subjects(sink) == ["control"]
        ok(mg.cli("queue", "release", stuck))
        wait_for(lambda: state(mg, stuck) == "delivered", 10, what="the released message")
        assert sorted(subjects(sink)) == ["control", "stuck"]
    finally:
        mg.close()
