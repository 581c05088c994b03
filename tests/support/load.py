"""Load for end-to-end tests: many messages with unique tokens, and an exactly-once check."""

from __future__ import annotations

import smtplib
import threading
from collections import Counter
from pathlib import Path

from tests.support.process import Mailgate, header, wait_for


def send_many(
    port: int,
    count: int,
    recipient: str,
    *,
    clients: int = 4,
    prefix: str = "m",
    tolerate_failures: bool = False,
) -> list[str]:
    """Send `count` messages (one token each) over `clients` sessions; the tokens accepted.

    A session that fails raises at the end, unless `tolerate_failures` (a test that kills
    the server on purpose): then what got a 250 is returned."""
    accepted: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for i in range(n, count, clients):
                    token = f"{prefix}{i}"
                    body = f"Subject: {token}\r\nX-Token: {token}\r\n\r\nbody {token}\r\n"
                    smtp.sendmail("load@example.org", [recipient], body)
                    with lock:
                        accepted.append(token)
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(exc)  # what got a 250 is in `accepted`

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if failures and not tolerate_failures:
        raise AssertionError(f"{len(failures)} session(s) failed: {failures[0]!r}")
    return accepted


def tokens(mg: Mailgate, net: str, po: str, mbx: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for path in mg.delivered(net, po, mbx):
        found[header(path, "X-Token") or str(path)] += 1
    return found


def assert_exactly_once(
    mg: Mailgate, accepted: list[str], net: str, po: str, mbx: str, timeout: float = 60
) -> None:
    """Every accepted token arrives (within `timeout`), and none arrives twice."""
    wait_for(
        lambda: set(accepted) <= set(tokens(mg, net, po, mbx)), timeout, 0.1,
        f"all {len(accepted)} messages in {mbx}",
    )  # fmt: skip
    duplicates = {t: n for t, n in tokens(mg, net, po, mbx).items() if n > 1}
    assert not duplicates, f"duplicated: {sorted(duplicates)[:10]}"


def maildir(mg: Mailgate, net: str, po: str, mbx: str) -> Path:
    return mg.mailbox_dir(net, po, mbx)
