"""Several nodes on one PostgreSQL queue against one node on SQLite: accept and deliver rates.

    PYTHONPATH=. .venv/bin/python bench/nodes.py [--messages 600] [--sessions 6]
                                                [--nodes sqlite:1,postgres:1,postgres:2,postgres:3]
                                                [--single-process]

Each configuration starts its nodes (`mailgate run`, each with its own data directory
and port; `--single-process` runs each node in one process instead of a master with
receive and interchange workers), sharing one postoffice root and, for PostgreSQL, one
schema of its own at MAILGATE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test),
created by `mailgate db upgrade` and dropped after. It sends `--messages` messages (one
recipient, 5 KiB) over `--sessions` persistent smtplib sessions spread evenly over the
nodes' ports, and waits until the mailbox holds every accepted message. Printed per
configuration: accept_msgs_per_s (250s after DATA over the time from the first connect
to the last 250), deliver_msgs_per_s (delivered messages over the time from the first
connect to the last link into new/), and the CPU seconds of the whole machine in that
window. On this 2-core machine several nodes cannot be faster than one: the figure that
matters is what the shared store costs per message. Run from the repository root with
PYTHONPATH=. (it uses tests/support/).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.load import send_many
from tests.support.nodes import make_node
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for
from tests.support.stores import pg_schema

RCPT = "u1@po.bench.example.test"


@contextlib.contextmanager
def store(kind: str) -> Iterator[str]:
    """The [queue] url of a fresh store ("" for SQLite: each node's own file)."""
    if kind == "sqlite":
        yield ""
        return
    with pg_schema() as (_, url):
        yield url


def nodes_for(kind: str, count: int, root: Path, url: str) -> list[Mailgate]:
    shared = root / "postoffice"
    made = []
    for n in range(1, count + 1):
        name = f"b{n}"
        if url:
            made.append(make_node(root / name, name, url, postoffice=shared))
        else:
            (root / name).mkdir(parents=True)
            config = DEFAULT_CONFIG.replace(
                "[postoffice]\n", f'[postoffice]\nroot = "{shared}"\n', 1
            )
            made.append(Mailgate(root / name, config=config))
    return made


def host_cpu() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / 100.0  # minus idle and iowait, in s


def delivered(box: Path) -> tuple[int, float]:
    """Messages in the mailbox's new/, and the newest one's mtime."""
    newest, count = 0.0, 0
    for entry in (box / "new").iterdir():
        count += 1
        newest = max(newest, entry.stat().st_mtime)
    return count, newest


def run(kind: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, store(kind) as url:
        root = Path(tmp)
        nodes = nodes_for(kind, count, root, url)
        mode = ("--single-process",) if args.single_process else ()
        try:
            if url:
                assert nodes[0].cli("db", "upgrade").returncode == 0
            nodes[0].add_mailbox("MS:BENCH/PO/U1")
            for mg in nodes:
                mg.start(*mode)
            box = root / "postoffice" / "BENCH" / "PO" / "U1"
            accepted: list[str] = []
            lock = threading.Lock()
            per_node = args.messages // count
            sessions = max(1, args.sessions // count)

            def load(mg: Mailgate) -> None:
                got = send_many(mg.port, per_node, RCPT, clients=sessions, prefix=mg.root.name)
                with lock:
                    accepted.extend(got)

            cpu, started = host_cpu(), time.time()
            senders = [threading.Thread(target=load, args=(mg,)) for mg in nodes]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            accepted_at = time.time()
            wait_for(lambda: delivered(box)[0] >= len(accepted), 300, interval=0.2,
                     what="every message delivered")  # fmt: skip
            cpu = host_cpu() - cpu
            done, newest = delivered(box)
            return {
                "store": kind,
                "nodes": count,
                "accepted": len(accepted),
                "accept_msgs_per_s": round(len(accepted) / (accepted_at - started)),
                "deliver_msgs_per_s": round(done / (max(newest, accepted_at) - started)),
                "host_cpu_s": round(cpu, 1),
                "cpu_ms_per_msg": round(1000 * cpu / max(1, done), 2),
            }
        finally:
            for mg in nodes:
                with contextlib.suppress(Exception):
                    mg.stop()
                mg.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--nodes", default="sqlite:1,postgres:1,postgres:2,postgres:3")
    parser.add_argument("--single-process", action="store_true")
    args = parser.parse_args()
    for spec in args.nodes.split(","):
        kind, _, count = spec.partition(":")
        print(run(kind, int(count or 1), args), flush=True)


if __name__ == "__main__":
    main()
