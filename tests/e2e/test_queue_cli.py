"""`mailgate queue` as real subprocesses against a real service's queue, running and stopped.

Messages are made to sit in the queue the way they do in production: delivery to the
postoffice is paused (`mailgate ctl pause postoffice`), or the smarthost (a real
scriptable SMTP sink) answers 451, with a retry interval of an hour, so only an
administrator's command can move them.
"""

from __future__ import annotations

import email
import json
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from email import policy
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from mailgate.control.server import request, socket_path
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import HangingServer, Sink

ALICE = "alice@po1.net1.example.test"
BOB = "bob@po1.net1.example.test"
FRIEND = "friend@elsewhere.org"
SLOW = "slow@elsewhere.org"


def config(smarthost_port: int) -> str:
    return DEFAULT_CONFIG + (
        f'\n[queue]\nretry_min = "1h"\nretry_max = "2h"\n'
        f'\n[smarthost]\nhost = "127.0.0.1"\nport = {smarthost_port}\nthreads = 1\n'
    )


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        sink.fail("RCPT", "451 4.2.0 come back later", address=SLOW)
        yield sink


@pytest.fixture
def mg(tmp_path: Path, sink: Sink) -> Iterator[Mailgate]:
    mg = Mailgate(tmp_path, config=config(sink.port))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    try:
        yield mg
    finally:
        mg.close()


def body_of(subject: str) -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n{subject} body\r\n".encode()


def send(mg: Mailgate, rcpts: list[str], subject: str) -> str:
    """Send one message; its queue id, from the 250 reply to DATA."""
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(ALICE)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(body_of(subject))
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_json(mg: Mailgate, *args: str) -> Any:
    return json.loads(ok(mg.cli("queue", *args, "--json")))


def queue_ids(mg: Mailgate, *args: str) -> list[str]:
    return [m["queue_id"] for m in as_json(mg, "list", *args)]


def export(mg: Mailgate, queue_id: str) -> subprocess.CompletedProcess[bytes]:
    where = ("--config", str(mg.config_path), "--data-dir", str(mg.data_dir))
    return subprocess.run(
        mg.command("queue", "export", queue_id, *where),
        capture_output=True, timeout=60, env=mg.env,
    )  # fmt: skip


def stored_body(mg: Mailgate, queue_id: str) -> bytes:
    db = sqlite3.connect(mg.data_dir / "queue" / "queue.db")
    try:
        row = db.execute("SELECT data FROM bodies WHERE message_id = ?", (queue_id,)).fetchone()
        return bytes(row[0])
    finally:
        db.close()


def bounces(mg: Mailgate) -> list[Message]:
    found = []
    for path in mg.delivered("NET1", "PO1", "ALICE"):
        report = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if report.get_content_type() == "multipart/report":
            found.append(report)
    return found


def diagnostic(report: Message) -> str:
    status = list(report.iter_parts())[1].get_payload()[1]
    return str(status["Diagnostic-Code"])


def deferred(mg: Mailgate, count: int) -> None:
    mg.wait_events(2400, count=count)


def plant(mg: Mailgate, sql: str) -> None:
    db = sqlite3.connect(mg.data_dir / "queue" / "queue.db", timeout=30)
    try:
        db.execute(sql)
        db.commit()
    finally:
        db.close()


def test_queue_commands_on_a_running_service(mg: Mailgate, sink: Sink) -> None:
    mg.start()
    sink.fail("DATA", "451 4.3.0 try again later", times=1)
    ok(mg.cli("ctl", "pause", "postoffice"))
    local = send(mg, [BOB], "local")
    friend = send(mg, [FRIEND], "friend")
    slow = send(mg, [SLOW], "slow")
    deferred(mg, 2)

    # list, with each filter
    listed = as_json(mg, "list")
    assert [m["queue_id"] for m in listed] == [local, friend, slow]
    rcpts = {m["queue_id"]: m["recipients"][0] for m in listed}
    assert (rcpts[local]["address"], rcpts[local]["connector"]) == (BOB, "postoffice")
    assert rcpts[local]["state"] == "queued"
    assert rcpts[friend]["state"] == "deferred"
    assert "451 4.3.0 try again later" in rcpts[friend]["last_reply"]
    assert "451 4.2.0 come back later" in rcpts[slow]["last_reply"]
    assert listed[0]["sender"] == ALICE and listed[0]["size"] > len(body_of("local"))
    assert 0 <= listed[0]["age"] < 600
    assert queue_ids(mg, "--state", "deferred") == [friend, slow]
    assert queue_ids(mg, "--connector", "postoffice") == [local]
    assert queue_ids(mg, "--recipient", FRIEND) == [friend]
    assert queue_ids(mg, "--sender", ALICE, "--limit", "2") == [local, friend]
    assert queue_ids(mg, "--older-than", "1h") == []
    human = ok(mg.cli("queue", "list"))
    assert local in human and f"<{SLOW}> smarthost deferred" in human
    assert "-- 3 message(s), 3 recipient(s)" in human

    # summary
    shape = as_json(mg, "summary")
    assert shape["buckets"][0] == "5m" and shape["buckets"][-1] == "1280m+"
    assert shape["connectors"]["postoffice"]["states"]["queued"] == 1
    assert shape["connectors"]["smarthost"]["states"]["deferred"] == 2
    assert shape["connectors"]["smarthost"]["ages"]["5m"] == 2
    assert shape["total"]["total"] == 3
    assert "TOTAL" in ok(mg.cli("queue", "summary"))

    # show: envelope, recipients, attempts, headers
    shown = as_json(mg, "show", friend)
    assert shown["sender"] == ALICE and shown["message_id"] == "<friend@test>"
    assert shown["body_stored"] and ["Subject", "friend"] in shown["headers"]
    assert any(name == "Received" for name, _ in shown["headers"])
    [attempt] = shown["recipients"][0]["history"]
    assert attempt["disposition"] == "deferred" and "451 4.3.0" in attempt["reply"]
    text = ok(mg.cli("queue", "show", friend.lower()))
    assert text.splitlines()[0] == friend and "Subject: friend" in text

    # export: the stored bytes
    exported = export(mg, friend)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == stored_body(mg, friend)
    assert exported.stdout.endswith(body_of("friend"))

    # retry: the deferred message (next attempt in an hour) goes at once
    assert as_json(mg, "retry", friend)["retried"] == 1
    [delivered] = sink.wait_messages(1, timeout=10)
    assert delivered.recipients == [FRIEND]
    assert delivered.content.replace(b"\r\n", b"\n") == exported.stdout.replace(b"\r\n", b"\n")
    assert mg.wait_events(4014)[0]["fields"]["queue_id"] == friend

    # hold keeps a message from delivery; release lets it go
    assert as_json(mg, "hold", local)["held"] == 1
    ok(mg.cli("ctl", "resume", "postoffice"))
    send(mg, [BOB], "control")
    wait_for(lambda: len(mg.delivered("NET1", "PO1", "BOB")) == 1, 10, what="the control mail")
    assert queue_ids(mg, "--state", "held") == [local]
    assert len(mg.delivered("NET1", "PO1", "BOB")) == 1, "the held message stayed"
    assert as_json(mg, "release", local)["released"] == 1
    wait_for(lambda: len(mg.delivered("NET1", "PO1", "BOB")) == 2, 10, what="the released mail")

    # delete --ndr: the sender gets a report, the message is gone
    gone = ok(mg.cli("queue", "delete", slow, "--ndr"))
    assert f"{slow}: deleted" in gone
    [report] = wait_for(lambda: bounces(mg), 10, what="the deletion report in ALICE")
    assert "554 5.7.0 deleted by the administrator" in diagnostic(report)
    missing = mg.cli("queue", "show", slow)
    assert missing.returncode == 1 and f"no message {slow}" in missing.stderr

    # bounce: returned to the sender; the finished message keeps no body
    slow2 = send(mg, [SLOW], "slow2")
    deferred(mg, 3)
    returned = as_json(mg, "bounce", slow2)
    assert returned["returned"] and returned["bounce_to"] == ALICE
    wait_for(lambda: len(bounces(mg)) == 2, 10, what="the return report in ALICE")
    assert any("returned by the administrator" in diagnostic(b) for b in bounces(mg))
    finished = as_json(mg, "show", slow2)
    assert finished["done_at"] is not None and not finished["body_stored"]
    assert finished["recipients"][0]["state"] == "bounced"
    no_body = export(mg, slow2)
    assert no_body.returncode == 1 and b"no stored body" in no_body.stderr
    assert queue_ids(mg, "--state", "bounced") == [slow2]

    for event_id in (4010, 4011, 4012, 4013, 4014, 2117):
        assert mg.events(event_id), event_id
    assert mg.events(4012)[0]["fields"]["queue_id"] == slow

    # the wake-up the commands send reaches the interchange worker through the master
    answers = request(socket_path(mg.data_dir), "wake", {"connector": "smarthost"})
    assert [a for a in answers.values()] == [{"woken": ["smarthost"], "down_cleared": []}]

    # check: healthy, then a planted orphan
    assert as_json(mg, "check")["ok"] is True
    plant(mg, "INSERT INTO bodies (message_id, data) VALUES ('GHOST', x'00')")
    damaged = mg.cli("queue", "check", "--json")
    assert damaged.returncode == 1
    [problem] = json.loads(damaged.stdout)["problems"]
    assert problem["kind"] == "orphan-bodies" and problem["examples"] == ["GHOST"]
    assert "bodies whose message is gone" in mg.cli("queue", "check").stdout
    assert mg.healthy()


def test_queue_commands_with_the_service_stopped(mg: Mailgate, sink: Sink) -> None:
    mg.start("--single-process")
    ok(mg.cli("ctl", "pause", "postoffice"))
    local = send(mg, [BOB], "local")
    slow1, slow2, slow3 = (send(mg, [SLOW], f"slow{n}") for n in (1, 2, 3))
    deferred(mg, 3)
    assert as_json(mg, "retry", "--all", "--connector", "smarthost")["retried"] == 3
    deferred(mg, 6)  # retried at once (single-process service), deferred again
    assert mg.stop() == 0

    assert queue_ids(mg) == [local, slow1, slow2, slow3]
    assert as_json(mg, "summary")["connectors"]["smarthost"]["states"]["deferred"] == 3
    assert as_json(mg, "show", local)["recipients"][0]["state"] == "queued"
    exported = export(mg, local)
    assert exported.returncode == 0 and exported.stdout == stored_body(mg, local)

    assert as_json(mg, "retry", slow1)["retried"] == 1
    assert as_json(mg, "retry", slow1)["retried"] == 0, "due already"
    held = mg.cli("queue", "hold", "--all", "--json")
    assert json.loads(ok(held)) == {
        "queue_id": None, "connector": None, "held": 4, "skipped_active": 0,
    }  # fmt: skip
    assert held.stderr == "", "no service to nudge: nothing said"
    assert as_json(mg, "release", local)["released"] == 1
    assert queue_ids(mg, "--state", "held") == [slow1, slow2, slow3]
    assert as_json(mg, "release", "--all", "--connector", "smarthost")["released"] == 3
    assert {m["recipients"][0]["state"] for m in as_json(mg, "list")} == {"queued"}

    returned = as_json(mg, "bounce", slow2)
    assert returned["bounce_to"] == ALICE and returned["bounce_id"]
    deleted = as_json(mg, "delete", slow3, "--ndr")
    assert deleted["deleted"] and deleted["bounce_to"] == ALICE
    assert as_json(mg, "delete", slow1)["bounce_id"] is None
    bounce_ids = [returned["bounce_id"], deleted["bounce_id"]]
    assert queue_ids(mg) == [local, *sorted(bounce_ids)]
    assert as_json(mg, "check")["ok"] is True

    usage = mg.cli("queue", "hold")
    assert usage.returncode == 2 and "give a queue ID or --all" in usage.stderr
    unknown = mg.cli("queue", "retry", "00000000000000NOPE")
    assert unknown.returncode == 1 and "no message 00000000000000NOPE" in unknown.stderr

    # Started again, the service delivers what the commands left due.
    mg.start()
    wait_for(lambda: len(mg.delivered("NET1", "PO1", "BOB")) == 1, 15, what="the released mail")
    reports = wait_for(lambda: len(bounces(mg)) == 2 and bounces(mg), 15, what="two reports")
    assert sorted("administrator" in diagnostic(r) for r in reports) == [True, True]
    assert sink.messages == []
    assert mg.stop() == 0

    plant(
        mg,
        "INSERT INTO recipients (message_id, address, connector, state, due_at, updated_at) "
        "VALUES ('GHOST', 'lost@x.test', 'postoffice', 'queued', 0, 0)",
    )
    damaged = mg.cli("queue", "check")
    assert damaged.returncode == 1
    assert "recipients whose message is gone" in damaged.stdout and "GHOST" in damaged.stdout


def test_a_message_being_delivered_is_taken_from_its_thread(tmp_path: Path) -> None:
    """A smarthost that never greets keeps a recipient leased by its thread: a bulk hold
    leaves it alone and says so, `queue check` sees no damage in a live lease, and a hold
    of that message takes it from the thread at once, cancelling the attempt."""
    hanging = HangingServer(free_port())
    mg = Mailgate(tmp_path, config=config(hanging.port))
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    try:
        assert "no queue yet" in ok(mg.cli("queue", "check"))
        mg.start("--single-process")
        stuck = send(mg, [FRIEND], "stuck")
        wait_for(lambda: queue_ids(mg, "--state", "active") == [stuck], 15, what="the lease")
        [rcpt] = as_json(mg, "show", stuck)["recipients"]
        assert rcpt["lease_owner"].startswith("mx.test:") and ":smarthost-1:" in rcpt["lease_owner"]
        assert as_json(mg, "hold", "--all") == {
            "queue_id": None, "connector": None, "held": 0, "skipped_active": 1,
        }  # fmt: skip
        assert as_json(mg, "check")["ok"] is True, "a live lease is not damage"
        held = as_json(mg, "hold", stuck)
        assert held["held"] == 1
        assert held["revoked"] == [
            {"recipient": FRIEND, "connector": "smarthost", "thread": "smarthost-1",
             "fate": "cancelled", "reply": "451 4.3.0 attempt cancelled by the administrator"},
        ]  # fmt: skip
        assert as_json(mg, "show", stuck)["recipients"][0]["state"] == "held"
        assert as_json(mg, "check")["ok"] is True
    finally:
        mg.close()
        hanging.stop()
