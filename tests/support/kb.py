"""Helpers of the failure-catalog regression modules (tests/e2e/test_kb_q*.py).

Each of those modules reproduces one row of DESIGN.md section 5 against a real
`mailgate run`: sending over loopback SMTP, reading what landed in mailboxes,
asking the control socket and the queue commands, and damaging the real queue
file where a row is about damage. Nothing here fakes a component.
"""

from __future__ import annotations

import email
import json
import smtplib
import sqlite3
from email import policy
from email.message import Message
from typing import Any

from tests.support.process import Mailgate, wait_for

DOMAIN = "po1.net1.example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
POISON = f"poison@{DOMAIN}"


def send(mg: Mailgate, sender: str, rcpts: list[str], body: bytes) -> str:
    """Send one message; its queue id, from the 250 reply to DATA."""
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            assert code == 250, reply
        code, reply = client.data(body)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def bounces(mg: Mailgate, mbx: str = "ALICE") -> list[Message]:
    """The delivery reports (multipart/report) in a mailbox of NET1/PO1."""
    found = []
    for path in mg.delivered("NET1", "PO1", mbx):
        report = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if report.get_content_type() == "multipart/report":
            found.append(report)
    return found


def report_blocks(report: Message) -> list[Message]:
    """The per-recipient blocks of a report's message/delivery-status part."""
    status = list(report.iter_parts())[1]
    return list(status.get_payload())[1:]  # type: ignore[arg-type]


def status(mg: Mailgate) -> dict[str, Any]:
    result = mg.cli("ctl", "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def status_text(mg: Mailgate) -> str:
    """`mailgate ctl status` as an administrator reads it."""
    result = mg.cli("ctl", "status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def threads(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [t | {"pid": p["pid"]} for p in state["processes"] for t in p["threads"]]


def busy_on(mg: Mailgate, recipient: str) -> dict[str, Any] | None:
    """The thread working on `recipient` right now, if one is (with its process's pid)."""
    for thread in threads(status(mg)):
        work = thread.get("work") or {}
        if work.get("recipient") == recipient and thread["alive"]:
            return thread
    return None


def queue(mg: Mailgate, *args: str) -> Any:
    """`mailgate queue ARGS --json`, parsed; the command must succeed."""
    result = mg.cli("queue", *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def recipient_states(mg: Mailgate, queue_id: str) -> dict[str, str]:
    shown = queue(mg, "show", queue_id)
    return {r["address"]: r["state"] for r in shown["recipients"]}


def wait_state(mg: Mailgate, queue_id: str, address: str, state: str, timeout: float) -> None:
    wait_for(
        lambda: recipient_states(mg, queue_id).get(address) == state,
        timeout,
        0.2,
        f"<{address}> of {queue_id} to be {state}",
    )


def plant(mg: Mailgate, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the real queue file under the running service (damage, for a test)."""
    db = sqlite3.connect(mg.data_dir / "queue" / "queue.db", timeout=30)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


def metric(admin_port: int, name: str, **labels: str) -> float:
    """One sample of /metrics on the admin listener (0 if the series is absent)."""
    import urllib.request

    from mailgate.web.metrics import parse_key

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        found, found_labels = parse_key(series)
        if found == name and found_labels == labels:
            return float(value)
    return 0.0
