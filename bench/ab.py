"""Two mailgate trees (or two settings) side by side: rate and CPU per message of each thread.

    .venv/bin/python bench/ab.py --src /tmp/before/src --against src [--runs 4]
        [--sessions 10] [--messages 3000] [--size 5120] [--deliver | --relay]
        [--flush-delay-us 1000] [--set 'queue:commit_flush_threads = 1' ...]
        [--set-b 'postoffice:linger = "0s"' ...] [--threads]

bench/vs_postfix.py compares mailgate with Postfix; this compares mailgate with itself,
for a change whose effect is smaller than the noise of one run on a shared machine: the
two sides (A: `--src` with `--set`, B: `--against` with `--set-b`, either defaulting to
the installed tree and the bench's configuration) run alternately, `--runs` times each,
against smtp-source, accept only (the postoffice connector paused) or, with `--deliver`,
until every message is in the Maildir, or with `--relay` until Postfix's smtp-sink (the
smarthost) has every one. Each run prints its rate; the end prints each
side's median rate and median CPU ms/msg of all its processes (from /proc, every thread of
the master and the workers), and with `--threads` each thread's share (named as `top -H`
shows them), which says where a change moved the cost. `--flush-delay-us` runs both under
the flush-latency shim (bench/flushdelay.c), as vs_postfix.py does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from flushshim import FlushShim
from mailgate_instance import CONFIG, Mailgate, add_mailgate_options, setting_arg, with_settings
from measure import SmtpSink, smtp_source

RELAY_RECIPIENT = "r1@relay.example"  # routed to the smarthost, as in vs_postfix.py

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    label: str
    src: str | None
    settings: list[tuple[str, str]]
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # ms/msg, all processes
    threads: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def _threads(pids: dict[int, str]) -> dict[tuple[str, str, str], float]:
    """CPU seconds of every thread of `pids`, by (process name, thread name, tid)."""
    found = {}
    for pid, name in pids.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            found[(name, comm, tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def _config(settings: list[tuple[str, str]]) -> str:
    return with_settings(CONFIG, settings)


def run_once(side: Side, args: argparse.Namespace, python: str, root: Path) -> None:
    root.mkdir(parents=True)
    mg = Mailgate(root, python, src=side.src, config=_config(side.settings), commit_stats=False)
    if args.flush_delay_us:
        shim = FlushShim(root / "shim", args.flush_delay_us)
        mg.service_env.update(shim.environment(shim.counter("mailgate")))
    address = mg.add_mailboxes()[0]
    sink = SmtpSink(args.smtp_sink) if args.relay else None
    if sink is not None:
        mg.smarthost = f"127.0.0.1:{sink.port}"
        address = RELAY_RECIPIENT
    mg.start()
    try:
        if not (args.deliver or args.relay):
            mg.set_paused("postoffice", True)
        pids = mg.pids()
        before = _threads(pids)
        started = time.monotonic()
        run = smtp_source(
            mg.port, sessions=args.sessions, messages=args.messages, length=args.size,
            sender="s@bench.test", recipient=address, timeout=600,
        )  # fmt: skip
        if run.error:
            raise SystemExit(run.error)
        deadline = time.monotonic() + 120
        while args.deliver and time.monotonic() < deadline:
            if sum(len(os.listdir(d)) for d in mg.new_dirs()) >= args.messages:
                break
            time.sleep(0.02)
        if sink is not None:
            sink.wait_received(args.messages, 120)
        seconds = time.monotonic() - started if args.deliver or args.relay else run.seconds
        after = _threads(pids)
    finally:
        mg.stop()
        if sink is not None:
            sink.stop()
    side.rates.append(args.messages / seconds)
    spent = {key: after[key] - before.get(key, 0.0) for key in after}
    side.cpu.append(1000 * sum(spent.values()) / args.messages)
    by_name: dict[str, float] = defaultdict(float)
    for (process, thread, _), seconds_used in spent.items():
        by_name[f"{process}/{thread}"] += seconds_used
    for name, seconds_used in by_name.items():
        side.threads[name].append(1000 * seconds_used / args.messages)
    print(f"  {side.label}: {side.rates[-1]:.0f} msg/s, {side.cpu[-1]:.3f} CPU ms/msg", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", help="B's src/ directory (default: the installed tree)")
    p.add_argument(
        "--set", action="append", default=[], type=setting_arg, help="A's 'section: key = value'"
    )
    p.add_argument(
        "--set-b", action="append", default=[], type=setting_arg, help="B's 'section: key = value'"
    )
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--deliver", action="store_true", help="until delivered into the Maildir")
    p.add_argument("--relay", action="store_true", help="until relayed to smtp-sink")
    p.add_argument("--smtp-sink", default="/usr/sbin/smtp-sink", help="smtp-sink path")
    p.add_argument("--flush-delay-us", type=int, default=0)
    p.add_argument("--threads", action="store_true", help="each thread's CPU ms/msg")
    add_mailgate_options(p)
    args = p.parse_args()
    sides = [Side("A", args.src, args.set), Side("B", args.against, args.set_b)]
    for side in sides:
        settings = " ".join(f"[{section}] {line}" for section, line in side.settings)
        print(f"{side.label}: {side.src or 'installed tree'} {settings}")
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        for n in range(args.runs):
            for side in sides if n % 2 == 0 else reversed(sides):
                run_once(side, args, args.python, work / f"{side.label}{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    case = "Maildir end to end" if args.deliver else "accept only"
    case = "relay end to end" if args.relay else case
    shim = f", +{args.flush_delay_us} us per flush" if args.flush_delay_us else ""
    print(
        f"\n{case}, {args.sessions} sessions, {args.messages} messages{shim}, "
        f"medians of {args.runs} alternating runs:"
    )
    for side in sides:
        print(
            f"  {side.label}: {statistics.median(side.rates):.0f} msg/s "
            f"(runs {', '.join(f'{r:.0f}' for r in side.rates)}), "
            f"{statistics.median(side.cpu):.3f} CPU ms/msg"
        )
    a, b = (statistics.median(side.rates) for side in sides)
    print(f"  A/B: {a / b:.2f}x")
    if args.threads:
        names = sorted(set(sides[0].threads) | set(sides[1].threads))
        rows = [(n, *(statistics.median(s.threads.get(n, [0.0])) for s in sides)) for n in names]
        print("\n  thread CPU ms/msg (median), A / B:")
        for name, a_ms, b_ms in sorted(rows, key=lambda row: -max(row[1], row[2])):
            if max(a_ms, b_ms) >= 0.01:
                print(f"    {name:36} {a_ms:.3f} / {b_ms:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
