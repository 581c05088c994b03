"""Q151669: an exception left a lock held and every thread of the old connector blocked.

DESIGN §5 row 1: an all-threads-blocked backlog is detected as a stall. The threads that
hold the message path together must be watched too: the group committer blocked on the
queue's writer lock (held here from outside, by this test, as a wedged process would),
and the SMTP event loop wedged inside a callback (a fault point that blocks until this
test releases it). Each must be reported (event 5003 with its stack, /healthz 503) and
recover by itself once released (event 5005, /healthz 200, the mail delivered).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import smtplib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
# A stall is reported after 2 s; abandoning takes far longer, so recovery is the same thread's.
CONFIG = DEFAULT_CONFIG + '\n[supervise]\nstall_after = "2s"\nstall_grace = "120s"\n'
MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]


def healthz(port: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def started(
    tmp_path: Path, mode: tuple[str, ...], env: dict[str, str] | None = None
) -> tuple[Mailgate, int]:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start(*mode, "--admin-listen", f"127.0.0.1:{admin}", env=env)
    return mg, admin


@contextlib.contextmanager
def writer_lock_held(mg: Mailgate) -> Iterator[None]:
    """Hold the queue's writer flock from this process, as a wedged writer would."""
    path = mg.data_dir / "queue" / "queue.db-writer"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases it


def send_in_background(mg: Mailgate, subject: str) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def send() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", mg.port, timeout=60) as client:
                body = f"Subject: {subject}\r\n\r\nhi\r\n"
                result.append(client.sendmail("s@example.org", [ALICE], body))
        except (OSError, smtplib.SMTPException) as exc:
            result.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, result


def stalled(mg: Mailgate, thread: str) -> dict:  # type: ignore[type-arg]
    found = wait_for(
        lambda: [e for e in mg.events(5003) if e["fields"]["thread"] == thread], 15,
        what=f"ThreadStalled for {thread}",
    )  # fmt: skip
    return found[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", MODES)
def test_committer_blocked_on_the_writer_lock_is_stalled_then_recovers(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    mg, admin = started(tmp_path, mode)
    try:
        with writer_lock_held(mg):
            sender, result = send_in_background(mg, "while the lock is held")
            event = stalled(mg, "commit")
            assert event["fields"]["kind"] == "blocked", event["fields"]
            assert "flock" in event["fields"]["stack"], event["fields"]["stack"]
            assert "commit.py" in event["fields"]["stack"]
            # The worker's stall reaches the master's /healthz with its next status (once a
            # second); other threads waiting on the lock (the master's node heartbeat) may be
            # named first.
            wait_for(
                lambda: (r := healthz(admin))[0] == 503
                and any("commit stalled" in reason for reason in r[1]["reasons"]),
                10, what="503 naming the stalled commit thread",
            )  # fmt: skip
            assert not result, "no answer while the message is not durable"
        sender.join(60)
        assert result == [{}], result
        # Other threads that waited on the lock (the heartbeat) may resume first.
        wait_for(
            lambda: any(e["fields"]["thread"] == "commit" for e in mg.events(5005)),
            10, what="5005 naming the commit thread",
        )  # fmt: skip
        wait_for(lambda: healthz(admin)[0] == 200, 10, what="/healthz 200 again")
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="delivery")
        assert mg.stop() == 0
    finally:
        mg.close()


@pytest.mark.parametrize("mode", MODES)
def test_wedged_smtp_event_loop_is_stalled_then_recovers(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    gate = tmp_path / "gate"
    env = {"MAILGATE_FAULTS": "receive.loop=block:1", "MAILGATE_FAULTS_GATE": str(gate)}
    mg, admin = started(tmp_path, mode, env)
    try:
        gate.touch()  # arm the fault point
        # The fault fires in the loop's callback for a new connection, in whichever receive
        # process the kernel hands it to.
        sender, result = send_in_background(mg, "into a wedged loop")
        event = stalled(mg, "smtp")
        assert event["fields"]["kind"] == "blocked", event["fields"]
        assert "faults.py" in event["fields"]["stack"], event["fields"]["stack"]
        wait_for(
            lambda: (r := healthz(admin))[0] == 503
            and any("smtp stalled" in reason for reason in r[1]["reasons"]),
            10, what="503 naming the stalled smtp thread",
        )  # fmt: skip
        gate.unlink()  # release the loop
        sender.join(60)
        assert result == [{}], result
        wait_for(
            lambda: any(e["fields"]["thread"] == "smtp" for e in mg.events(5005)),
            10, what="5005 naming the smtp thread",
        )  # fmt: skip
        wait_for(lambda: healthz(admin)[0] == 200, 10, what="/healthz 200 again")
        wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 10, what="delivery")
        assert mg.stop() == 0
    finally:
        mg.close()
