"""One instance per port: a second `mailgate run` (its own data directory, its own admin
port) on a port a running instance serves refuses to start, exits non-zero, and names the
port and the holder's pid; the first keeps all the mail. Receive workers of one instance
still share the port, and one that dies is replaced without the port ever closing.

Regression (issue "What outside tools and a day of administration found", point 5): every
receive worker bound with SO_REUSEPORT, so a second instance joined the port without a
word and took part of the mail (11 of 20 messages in one try); the data-directory lock
does not cover another data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mailgate.security.certs import generate
from tests.support.load import assert_exactly_once, send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
CONFIG = DEFAULT_CONFIG + "\n[processes]\nreceive = 2\n"
PORT_IN_USE = 1020
MESSAGE_RECEIVED = 3000
THREAD_EXCEPTION = 2380


def instance(root: Path, config: str = CONFIG) -> Mailgate:
    root.mkdir()
    mg = Mailgate(root, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    return mg


def refused(second: Mailgate, *extra: str) -> subprocess.Popen[bytes]:
    """Start `second` and wait (bounded) for it to exit; it must not be serving."""
    second.start(*extra, wait=False)
    assert second.proc is not None
    try:
        second.proc.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the second instance is still running on a port that is taken:\n{second.stderr()}"
        ) from None
    return second.proc


@pytest.mark.parametrize(
    ("first_mode", "second_mode"),
    [("master", "master"), ("master", "single-process"), ("single-process", "master")],
)
def test_second_instance_on_the_same_port_refuses_to_start(
    tmp_path: Path, first_mode: str, second_mode: str
) -> None:
    first = instance(tmp_path / "first")
    second = instance(tmp_path / "second")
    second.port = first.port
    try:
        first.start(*(["--single-process"] if first_mode == "single-process" else []))
        extra = ["--single-process"] if second_mode == "single-process" else []
        proc = refused(second, "--admin-listen", f"127.0.0.1:{free_port()}", *extra)
        assert proc.returncode != 0
        text = second.stderr()
        assert f"127.0.0.1:{first.port}" in text, text
        assert first.proc is not None and f"pid {first.proc.pid}" in text, text
        event = second.wait_events(PORT_IN_USE)[0]
        assert event["fields"]["listen"] == f"127.0.0.1:{first.port}"
        assert event["fields"]["pid"] == first.proc.pid
        # Every message reaches the first instance, one session each as the report had it.
        accepted = send_many(first.port, 20, ALICE, clients=20)
        assert len(accepted) == 20
        assert_exactly_once(first, accepted, "NET1", "PO1", "ALICE")
        assert not second.mailbox_dir("NET1", "PO1", "ALICE").joinpath("new").exists() or not (
            second.delivered("NET1", "PO1", "ALICE")
        )
    finally:
        second.close()
        first.close()


def test_second_instance_on_the_same_implicit_tls_port_refuses_to_start(tmp_path: Path) -> None:
    cert, key = generate(tmp_path / "pki", "localhost")
    tls_port = free_port()
    tls = f'\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    first = instance(
        tmp_path / "first", CONFIG + tls + f'implicit_tls_listen = "127.0.0.1:{tls_port}"\n'
    )
    second = instance(
        tmp_path / "second", CONFIG + tls + f'implicit_tls_listen = "127.0.0.1:{tls_port}"\n'
    )
    try:
        first.start()
        proc = refused(second)  # its own SMTP port, the first one's implicit-TLS port
        assert proc.returncode != 0
        event = second.wait_events(PORT_IN_USE)[0]
        assert event["fields"]["listen"] == f"127.0.0.1:{tls_port}"
        assert first.proc is not None and event["fields"]["pid"] == first.proc.pid
    finally:
        second.close()
        first.close()


def receive_workers(mg: Mailgate) -> dict[str, dict]:  # type: ignore[type-arg]
    result = mg.cli("ctl", "status", "--json")
    assert result.returncode == 0, result.stderr
    processes = json.loads(result.stdout)["processes"]
    return {p["name"]: p for p in processes if p["name"].startswith("receive-")}


def test_receive_workers_share_the_port_and_a_replaced_one_serves_again(tmp_path: Path) -> None:
    mg = instance(tmp_path / "one")
    try:
        mg.start()
        pids = {worker["pid"] for worker in receive_workers(mg).values()}
        assert len(pids) == 2
        accepted = send_many(mg.port, 60, ALICE, clients=12)
        received = mg.wait_events(MESSAGE_RECEIVED, count=60)
        by_pid = Counter(event["pid"] for event in received)
        assert set(by_pid) == pids, by_pid  # both workers took sessions
        old = receive_workers(mg)["receive-1"]["pid"]
        os.kill(old, signal.SIGKILL)
        accepted += send_many(mg.port, 20, ALICE, clients=4, prefix="during-")  # its sibling
        wait_for(lambda: receive_workers(mg)["receive-1"].get("pid") not in (None, old), 20,
                 what="a new receive-1")  # fmt: skip
        wait_for(mg.healthy, 20, what="healthy again")
        accepted += send_many(mg.port, 20, ALICE, clients=4, prefix="after-")
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
    finally:
        mg.close()


@pytest.mark.parametrize("mode", ["master", "single-process"])
def test_smtp_thread_restarted_after_a_crash_serves_the_same_port(
    tmp_path: Path, mode: str
) -> None:
    """A new life of the smtp thread serves the socket it had (no bind, so nothing can
    take the port meanwhile), in a receive worker and in a single process alike."""
    mg = instance(tmp_path / "one")
    try:
        extra = ["--single-process"] if mode == "single-process" else []
        mg.start(*extra, env={"MAILGATE_FAULTS": "receive.listener=raise:1"})
        crashed = mg.wait_events(THREAD_EXCEPTION, count=1 if extra else 2)
        assert all(event["fields"]["thread"] == "smtp" for event in crashed), crashed
        wait_for(mg.healthy, 20, what="healthy again")
        accepted = send_many(mg.port, 20, ALICE, clients=4)
        assert_exactly_once(mg, accepted, "NET1", "PO1", "ALICE")
    finally:
        mg.close()
