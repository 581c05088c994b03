"""A big queue: what mailgate costs with N messages waiting (`bench/vs_postfix.py --big-queue N`).

Twice, each on a fresh `mailgate run`: first with only the K messages to be delivered queued
(the empty-queue baseline), then with N. With the postoffice connector paused, the queue is
filled directly through mailgate's own queue write operation (bench/queue_fill.py, large
transactions: SMTP would take hours for a million), bodies of --big-queue-size bytes (500 by
default: 1,000,000 x 5 KB would be 5 GB). Then measured: the RSS of every mailgate process
(/proc), the time of `mailgate queue list` (its first page, 1,000 messages) and of `mailgate
ctl status` (command line, Python start-up included, which `mailgate --version` shows; and
the bare control-socket request), the CPU the idle service spends with them queued (the
connector paused: work done every second or two that grows with the queue shows here), the
delivery rate of the first K messages once the connector is resumed (Maildir new/ counts, RSS
sampled meanwhile), the restart time: stop (SIGTERM until exit) and start until SMTP answers,
and the start after a SIGKILL (which reads every page of the queue file, [queue]
check_at_start, and ends the dead service's leases). Prints a markdown table naming the
command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flushshim import FlushShim
from mailgate_instance import CONFIG, Mailgate, mailgate_env
from measure import (
    LEFTOVERS,
    BenchError,
    command_text,
    count_files,
    descendants,
    git_describe,
    new_run_dir,
)

FILL = Path(__file__).resolve().parent / "queue_fill.py"
MB = 1024 * 1024
IDLE_SECONDS = 5.0


@dataclass
class QueueRun:
    queued: int
    fill_seconds: float = 0.0
    rss_max: dict[str, int] = field(default_factory=dict)  # role -> most bytes of one process
    list_seconds: float = 0.0
    status_cli_seconds: float = 0.0
    status_socket_seconds: float = 0.0
    version_seconds: float = 0.0
    delivered: int = 0
    deliver_seconds: float = 0.0
    stop_seconds: float = 0.0
    start_seconds: float = 0.0
    idle_cpu: float = 0.0  # CPU seconds per second of the whole service, connector paused
    crash_start_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def deliver_rate(self) -> float:
        return self.delivered / self.deliver_seconds if self.deliver_seconds > 0 else 0.0


def timed(what: Callable[[], Any]) -> float:
    started = time.monotonic()
    what()
    return time.monotonic() - started


def sample_rss(mg: Mailgate, into: dict[str, int]) -> None:
    for key, size in mg.rss().items():
        role = key.split()[0]
        into[role] = max(into.get(role, 0), size)


def fill(args: argparse.Namespace, mg: Mailgate, count: int, recipients: list[str]) -> float:
    """Fill the queue with `count` messages; the seconds the filler itself reports (without
    its Python start-up)."""
    command = [
        args.python, str(FILL), str(mg.data_dir / "queue" / "queue.db"), str(count),
        "--size", str(args.big_queue_size), *(f"--to={r}" for r in recipients),
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=mailgate_env(args.src)
    ) as proc:
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            last = line.strip()
            print(f"  {last}", flush=True)
        if proc.wait(timeout=60) != 0 or not last.startswith("filled="):
            raise BenchError(f"queue_fill failed (exit {proc.returncode}): {last}")
    return float(last.rpartition("seconds=")[2])


def idle_cpu(mg: Mailgate) -> float:
    """The service's CPU seconds per second over IDLE_SECONDS with nothing to do."""
    before, started = mg.cpu_seconds(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    return (mg.cpu_seconds() - before) / (time.monotonic() - started)


def kill(mg: Mailgate) -> None:
    """SIGKILL the master and every worker, as a crash would end them, and reap it."""
    assert mg.proc is not None
    for pid in [mg.proc.pid, *descendants(mg.proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    mg.proc.wait(30)
    deadline = time.monotonic() + 30
    while descendants(mg.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def deliver(args: argparse.Namespace, mg: Mailgate, run: QueueRun, target: int) -> None:
    """Resume the postoffice connector and time the first `target` deliveries."""
    dirs = mg.new_dirs()
    deadline = time.monotonic() + 120 + target / 50
    mg.control("resume", {"connector": "postoffice"})
    started, next_sample = time.time(), 0.0
    while (count := count_files(dirs)) < target:
        if time.monotonic() > deadline or not mg.alive():
            run.errors.append(f"only {count} of {target} delivered before the deadline")
            break
        if time.monotonic() > next_sample:
            sample_rss(mg, run.rss_max)
            next_sample = time.monotonic() + 0.5
        time.sleep(0.05)
    last = max(d.stat().st_mtime_ns for d in dirs if d.exists()) / 1e9
    run.delivered, run.deliver_seconds = count, max(last - started, 1e-9)
    mg.set_paused("postoffice", True, timeout=60)


def measure(args: argparse.Namespace, shim: FlushShim | None, queued: int) -> QueueRun:
    run = QueueRun(queued)
    root = new_run_dir(f"big-queue-{queued}-", args.tmp_dir, args.keep)
    counter = shim.counter(root.name) if shim else None
    env = shim.environment(counter) if shim and counter else None
    mg = Mailgate(root, args.python, src=args.src, config=CONFIG, service_env=env)
    try:
        recipients = mg.add_mailboxes()
        mg.start()
        mg.set_paused("postoffice", True)
        print(f"  {queued} queued: filling", flush=True)
        run.fill_seconds = fill(args, mg, queued, recipients)
        sample_rss(mg, run.rss_max)
        run.status_socket_seconds = timed(lambda: mg.control("status", timeout=120))
        run.status_cli_seconds = timed(lambda: mg.cli("ctl", "status"))
        run.list_seconds = timed(lambda: mg.cli("queue", "list"))
        run.version_seconds = timed(lambda: mg.cli("--version", where=False))
        sample_rss(mg, run.rss_max)
        run.idle_cpu = idle_cpu(mg)
        deliver(args, mg, run, min(queued, args.big_queue_deliver))
        run.stop_seconds = timed(lambda: mg.stop(args.stop_timeout))
        run.start_seconds = mg.start()
        time.sleep(2)  # a moment of work with the whole queue after the restart
        sample_rss(mg, run.rss_max)
        kill(mg)
        run.crash_start_seconds = mg.start()
    except BenchError as exc:
        run.errors.append(str(exc))
    finally:
        mg.stop(args.stop_timeout)
    return run


def rss_text(run: QueueRun) -> str:
    return ", ".join(f"{role} {size / MB:.0f}" for role, size in sorted(run.rss_max.items()))


def print_table(args: argparse.Namespace, runs: list[QueueRun]) -> None:
    empty, big = runs
    ratio = big.deliver_rate / empty.deliver_rate if empty.deliver_rate else 0.0
    rows = [
        ("fill rate (queue API, not SMTP), msg/s", lambda r: f"{r.queued / r.fill_seconds:.0f}"),
        ("RSS, largest process of each role, MB", rss_text),
        (
            f"delivery of the first {args.big_queue_deliver} once resumed, msg/s",
            lambda r: f"{r.deliver_rate:.0f}",
        ),
        ("`mailgate queue list` (first 1,000), s", lambda r: f"{r.list_seconds:.2f}"),
        ("`mailgate ctl status`, s", lambda r: f"{r.status_cli_seconds:.2f}"),
        ("control-socket `status` alone, s", lambda r: f"{r.status_socket_seconds:.3f}"),
        ("`mailgate --version` (Python start-up), s", lambda r: f"{r.version_seconds:.2f}"),
        (
            f"idle service, connector paused, CPU % of one core ({IDLE_SECONDS:.0f} s)",
            lambda r: f"{100 * r.idle_cpu:.1f}",
        ),
        ("restart: stop + start until SMTP answers, s", restart_text),
        (
            "start after a SIGKILL (every page checked, leases ended), s",
            lambda r: f"{r.crash_start_seconds:.2f}",
        ),
    ]
    command = command_text("vs_postfix.py", args.argv)
    print()
    print(f"Command: `{command}`  ")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, mailgate {git_describe()}; bodies of "
        f"{args.big_queue_size} bytes, one recipient each; delivery rate with {big.queued} "
        f"queued is {ratio:.2f}x the empty queue's.  "
    )
    if big.queued < 1_000_000:
        print("**Smoke figures (a smaller queue than the target's): not for comparison.**  ")
    print()
    print(f"| | {empty.queued} queued (empty-queue baseline) | {big.queued} queued |")
    print("|---|---:|---:|")
    for name, cell in rows:
        print(f"| {name} | {cell(empty)} | {cell(big)} |")


def restart_text(r: QueueRun) -> str:
    total = r.stop_seconds + r.start_seconds
    return f"{total:.2f} ({r.stop_seconds:.2f} + {r.start_seconds:.2f})"


def main(args: argparse.Namespace, shim: FlushShim | None) -> int:
    if args.big_queue < args.big_queue_deliver:
        args.big_queue_deliver = args.big_queue
    runs = [measure(args, shim, q) for q in (args.big_queue_deliver, args.big_queue)]
    for run in runs:
        for error in run.errors:
            print(f"  error ({run.queued} queued): {error}", flush=True)
    print_table(args, runs)
    print(f"(run directories: {len(LEFTOVERS)}, removed at the end)", file=sys.stderr)
    return 1 if any(r.errors for r in runs) else 0
