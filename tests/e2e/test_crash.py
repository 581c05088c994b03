"""Crash safety: SIGKILL at random moments under concurrent SMTP load loses and duplicates nothing.

Four clients send continuously (one or two recipients per message, each message
carrying a unique token); the service is killed with SIGKILL several times and
restarted on the same data directory. Every message that got a 250 must end up in
each of its recipients' mailboxes exactly once; messages that never got a 250 may
or may not arrive, but never twice.
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.process import Mailgate, header, wait_for

MAILBOXES = ["MS:CRASH/PO/U1", "MS:CRASH/PO/U2", "MS:CRASH/PO/U3", "MS:CRASH/PO/U4"]
KILLS = 5


class Load:
    def __init__(self, port: int, addresses: list[str]) -> None:
        self.port = port
        self.addresses = addresses
        self.accepted: dict[str, list[str]] = {}
        self.attempted = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def client(self, n: int) -> None:
        rng = random.Random(n)
        i = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        token = f"c{n}-{i}"
                        i += 1
                        rcpts = rng.sample(self.addresses, k=rng.randint(1, 2))
                        body = f"Subject: {token}\r\nX-Token: {token}\r\n\r\nbody of {token}\r\n"
                        with self.lock:
                            self.attempted += 1
                        smtp.sendmail("load@example.org", rcpts, body)
                        with self.lock:
                            self.accepted[token] = rcpts
            except (OSError, smtplib.SMTPException):
                self.stop.wait(0.05)  # the server is down: retry until told to stop


def mailbox_tokens(mg: Mailgate) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for ms in MAILBOXES:
        net, po, mbx = ms[3:].split("/")
        for path in mg.delivered(net, po, mbx):
            token = header(path, "X-Token")
            assert token is not None, f"{path} has no token"
            found[(mbx.lower(), token)] += 1
    return found


def expected_pairs(load: Load) -> set[tuple[str, str]]:
    return {(rcpt.split("@")[0], token) for token, rcpts in load.accepted.items() for rcpt in rcpts}


@pytest.mark.slow
def test_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    try:
        addresses = [mg.add_mailbox(ms) for ms in MAILBOXES]
        mg.start()
        load = Load(mg.port, addresses)
        clients = [threading.Thread(target=load.client, args=(n,)) for n in range(4)]
        for thread in clients:
            thread.start()
        rng = random.Random(1234)
        try:
            for _ in range(KILLS):
                # Let load build up, then kill at an arbitrary moment (not a synchronisation).
                before = len(load.accepted)
                wait_for(lambda b=before: len(load.accepted) > b + 20, 20, what="load")
                time.sleep(rng.uniform(0.0, 0.4))
                mg.kill()
                mg.start()
            wait_for(lambda: len(load.accepted) > 50, 20, what="load after restarts")
        finally:
            load.stop.set()
            for thread in clients:
                thread.join(30)
        expected = expected_pairs(load)
        assert len(load.accepted) > 100

        def all_delivered() -> bool:
            return expected <= set(mailbox_tokens(mg))

        wait_for(all_delivered, 60, 0.2, "every accepted message in its mailboxes")
        found = mailbox_tokens(mg)
        duplicates = {pair: n for pair, n in found.items() if n > 1}
        assert not duplicates, f"duplicated deliveries: {sorted(duplicates)[:10]}"
        assert mg.stop() == 0
        # The service noticed and released what the killed processes held.
        assert mg.events(1000).__len__() == KILLS + 1
    finally:
        mg.close()
