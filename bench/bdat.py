"""BDAT against DATA over one connection: mailgate's smtp connector relaying to a mailgate.

    .venv/bin/python bench/bdat.py [--messages 2000] [--size 5120] [--rounds 3]

The client is this tree's SmarthostConnector, in this process, sending `--messages`
messages of `--size` octets one after another over one connection (the one-session case,
where latency decides) to a fresh `mailgate run` of this tree that only accepts (its
postoffice connector paused; every 250 still waits for the durable commit). Each round
runs `chunking = true` (MAIL, RCPT and BDAT LAST in one write: one round trip) and
`chunking = false` (MAIL, RCPT, DATA, then the body after the 354: two), the order swapping
every round. Printed per run: messages per second, the client's CPU microseconds per
message (this process) and the receiving service's CPU milliseconds per message; then the
medians of each mode.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mailgate.connectors.smtp import SmarthostConnector, SmarthostTarget
from mailgate.model import Claim, Disposition
from mailgate.observe.events import EventLog
from mailgate_instance import Mailgate, default_python


def claim(n: int, address: str) -> Claim:
    return Claim(
        recipient_id=n, queue_id=f"B{n}", address=address, connector="smarthost",
        sender="bench@client.test", received_at=time.time(), attempts=1, internal_failures=0,
        redelivery=False, smtputf8=False,
    )  # fmt: skip


def body(size: int) -> bytes:
    head = b"Subject: bench\r\nMessage-ID: <bench@client.test>\r\n\r\n"
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .....\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def one_run(
    mg: Mailgate, address: str, chunking: bool, messages: int, size: int
) -> tuple[float, float, float]:
    """(msg/s, client CPU us/msg, server CPU ms/msg) of `messages` sent over one session."""
    target = SmarthostTarget(
        host="127.0.0.1", port=mg.port, helo="bench.test", starttls="none", chunking=chunking
    )
    session = SmarthostConnector(target, EventLog()).open()
    message = body(size)
    server_before, cpu_before, started = mg.cpu_seconds(), time.process_time(), time.monotonic()
    for n in range(messages):
        [result] = session.deliver([claim(n, address)], message)
        if result.disposition is not Disposition.DELIVERED:
            raise SystemExit(f"message {n}: {result.reply}")
    wall = time.monotonic() - started
    cpu, server = time.process_time() - cpu_before, mg.cpu_seconds() - server_before
    session.close()
    return messages / wall, cpu / messages * 1e6, server / messages * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--python", default=default_python())
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mailgate-bench-bdat-"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    mg = Mailgate(root, args.python, src=src, commit_stats=False)
    figures: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    try:
        address = mg.add_mailboxes()[0]
        mg.start()
        mg.set_paused("postoffice", True)
        for r in range(args.rounds):
            for chunking in (True, False) if r % 2 == 0 else (False, True):
                figure = one_run(mg, address, chunking, args.messages, args.size)
                figures[chunking].append(figure)
                mode = "BDAT" if chunking else "DATA"
                print(f"round {r + 1} {mode}: {figure[0]:7.0f} msg/s  client {figure[1]:5.0f} "
                      f"us/msg  server {figure[2]:5.2f} ms/msg", flush=True)  # fmt: skip
    finally:
        mg.stop()
        shutil.rmtree(root, ignore_errors=True)
    for chunking, runs in figures.items():
        mode = "BDAT" if chunking else "DATA"
        rate, client, server = (statistics.median(f[i] for f in runs) for i in range(3))
        print(f"median {mode}: {rate:7.0f} msg/s  client {client:5.0f} us/msg  server "
              f"{server:5.2f} ms/msg")  # fmt: skip


if __name__ == "__main__":
    main()
