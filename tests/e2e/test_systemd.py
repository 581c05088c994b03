"""systemd notify protocol against a real datagram socket: READY, STATUS, and a watchdog
that is fed only while the service is healthy."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support.load import send_many
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def close(self) -> None:
        self.sock.close()


def test_ready_status_and_watchdog_only_while_healthy(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    config = DEFAULT_CONFIG + '\n[supervise]\nstall_after = "2s"\nstall_grace = "60s"\n'
    # The stop below gives up on the hung thread after stop_timeout: 2 s, not 10.
    config = config.replace('stop_timeout = "10s"', 'stop_timeout = "2s"')
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "400000",
        "MAILGATE_FAULTS": "interchange.deliver=hang",
    }
    mg.start(env=env)
    try:
        wait_for(lambda: any("READY" in m for m in notify.drain()), 10, what="READY=1")
        ready = next(m for m in notify.messages if "READY" in m)
        assert ready["READY"] == "1" and "healthy" in ready["STATUS"]
        wait_for(lambda: any("WATCHDOG" in m for m in notify.drain()), 5, what="WATCHDOG=1")
        send_many(mg.port, 2, "alice@po1.net1.example.test", clients=1)  # wedges a thread
        wait_for(
            lambda: any("UNHEALTHY" in m.get("STATUS", "") for m in notify.drain()), 15,
            what="STATUS reporting the stall",
        )  # fmt: skip
        notify.messages.clear()
        time.sleep(1.5)  # observe a window of pings (measured, not a synchronisation)
        window = notify.drain()
        assert window and not any("WATCHDOG" in m for m in window), window
        assert mg.stop() != 0
        assert any("STOPPING" in m for m in notify.drain())
    finally:
        mg.close()
        notify.close()


def test_no_notify_socket_is_a_no_op(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start(env={"NOTIFY_SOCKET": ""})
    try:
        assert send_many(mg.port, 3, "alice@po1.net1.example.test", clients=1)
        assert mg.stop() == 0
    finally:
        mg.close()
