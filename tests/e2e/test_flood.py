"""A flood of idle and slow sessions: over the cap they are refused at once, the held ones
time out, legitimate clients get through again, and memory stays bounded."""

from __future__ import annotations

import json
import smtplib
import socket
import time
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

FLOOD = 60
CONFIG = (
    DEFAULT_CONFIG
    + """
[smtp]
max_sessions = 20
max_sessions_per_ip = 100
timeout = "3s"

[processes]
receive = 1
"""
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def receive_pid(mg: Mailgate) -> int:
    status = json.loads(mg.cli("ctl", "status", "--json").stdout)
    return int(next(p["pid"] for p in status["processes"] if p["role"] == "receive"))


def test_flood_of_slow_sessions(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start()
    try:
        pid = receive_pid(mg)
        before = rss_kib(pid)
        flood: list[socket.socket] = []
        refused = 0
        for n in range(FLOOD):
            sock = socket.create_connection(("127.0.0.1", mg.port), timeout=10)
            greeting = sock.recv(512)
            if greeting.startswith(b"421 4.7.0"):
                refused += 1
                sock.close()
                continue
            assert greeting.startswith(b"220")
            sock.sendall(b"EHLO slow.example\r\nMAIL FROM:<slow@example.org>\r\n" if n % 2 else b"")
            flood.append(sock)  # then say nothing more: a slow client holding a session
        assert len(flood) == 20 and refused == FLOOD - 20
        with smtplib.SMTP(timeout=10) as legit:
            assert legit.connect("127.0.0.1", mg.port)[0] == 421, "refused while flooded"
        began = time.monotonic()

        def legit_gets_through() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
                    client.sendmail(
                        "ok@example.org", ["alice@po1.net1.example.test"], b"\r\nhi\r\n"
                    )
                    return True
            except smtplib.SMTPException:
                return False

        wait_for(legit_gets_through, 20, 0.2, "a legitimate client after the flood timed out")
        assert time.monotonic() - began < 15
        after = rss_kib(pid)
        print(f"receive worker RSS: {before} KiB before, {after} KiB after {FLOOD} flood sessions")
        assert after - before < 30 * 1024, (before, after)
        for sock in flood:
            sock.close()
        assert mg.wait_events(3010)
    finally:
        mg.close()
