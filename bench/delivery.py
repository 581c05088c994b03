"""Delivery alone, two source trees side by side: how fast, and at what CPU per message.

    .venv/bin/python bench/delivery.py --src OLD/src --src NEW/src [--messages 3000] [--pairs 4]

bench/throughput.py measures delivery while acceptance runs beside it, so on a busy machine
its delivery figure swings with whatever else runs. This one takes acceptance out: each run
starts a fresh `mailgate run` (bench/mailgate_instance.py, multi-process mode), pauses the
postoffice connector, sends `--messages` messages of 5 KB with smtp-source (10 sessions),
waits until all are queued, resumes the connector and times the delivery until the Maildir
holds them all. Measured: delivered messages per second, and the interchange worker's CPU
milliseconds per message in that window (from /proc, bench/measure.py): the cost of the
delivery path, which another job's load disturbs far less than the wall time. The trees
alternate, the order swapping every pair; the last lines give each tree's medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailgate_instance import Mailgate, default_python
from measure import SMTP_SOURCE, BenchError, count_files, smtp_source, tree_cpu_seconds

WAIT = 300.0


def one_run(src: str, messages: int, python: str) -> tuple[float, float]:
    """(delivered msg/s, interchange CPU ms per message) of one fresh mailgate from `src`."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-bench-delivery-"))
    mg = Mailgate(root, python, src=src, commit_stats=False)
    try:
        recipient = mg.add_mailboxes()[0]
        mg.start()
        mg.set_paused("postoffice", True)
        sent = smtp_source(
            mg.port, sessions=10, messages=messages, length=5120, sender="s@bench.client",
            recipient=recipient, timeout=WAIT, path=SMTP_SOURCE,
        )  # fmt: skip
        if sent.error:
            raise BenchError(sent.error)
        deadline = time.monotonic() + WAIT
        while mg.queue_state("postoffice").get("length", 0) < messages:
            if time.monotonic() > deadline:
                raise BenchError("not everything was queued")
            time.sleep(0.2)
        worker = next(pid for pid, role in mg.pids().items() if role == "interchange")
        cpu, started = tree_cpu_seconds(worker), time.monotonic()
        mg.set_paused("postoffice", False)
        while count_files(mg.new_dirs()) < messages:
            if time.monotonic() > deadline + WAIT:
                raise BenchError("not everything was delivered")
            time.sleep(0.05)
        seconds, cpu = time.monotonic() - started, tree_cpu_seconds(worker) - cpu
        return messages / seconds, cpu * 1000 / messages
    finally:
        mg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", action="append", required=True, help="a src/ tree (give two)")
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--python", default=default_python())
    args = p.parse_args()
    trees: list[str] = args.src
    results: dict[str, list[tuple[float, float]]] = {src: [] for src in trees}
    for n in range(args.pairs):
        for src in trees if n % 2 == 0 else list(reversed(trees)):
            rate, cpu = one_run(src, args.messages, args.python)
            results[src].append((rate, cpu))
            print(
                f"{src} run {n + 1}: delivered_msgs_per_s={rate:.1f} "
                f"interchange_cpu_ms_per_msg={cpu:.3f}",
                flush=True,
            )
    for src, rows in results.items():
        rate = statistics.median(r for r, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"{src}: median delivered_msgs_per_s={rate:.1f} interchange_cpu_ms_per_msg={cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
