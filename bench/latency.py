"""Accept -> delivered latency at half of the maximum rate (issue 14's p99 < 50 ms target).

    .venv/bin/python bench/latency.py [--case maildir|relay] [--rate N] [--fraction 0.5]
        [--seconds 20] [--warmup 2] [--connections 10] [--max-messages 3000] [--sessions 10]
        [--size 5120] [--runs 2] [--postoffice-threads N] [--set 'section: key = value'] [--no-hook]

Each run has two phases, each on a fresh `mailgate run` (bench/mailgate_instance.py) in a fresh
directory:

1. The maximum rate (skipped with --rate N): Postfix's smtp-source (`-d -s SESSIONS -m
   MAX_MESSAGES -l SIZE`, one recipient, loopback) as fast as mailgate takes them; the rate is
   end to end: messages delivered / time from starting smtp-source to the last delivery (the
   newest mtime in the Maildir's new/, or smtp-sink's last arrival with --case relay).
2. The paced phase: FRACTION of that rate for WARMUP + SECONDS, from bench/paced.py
   (CONNECTIONS persistent sessions, messages due at fixed intervals, each taken by the next
   free session; how late each was taken, the client's lag, is reported: a client that falls
   behind shows). Messages due in the warm-up are sent but not counted (a service that just
   started, its processes still warming, took 70-900 ms on the first second in trials).
   Once every accepted message is delivered, the service is stopped and each message's times
   are read from its own records (bench/timeline.py): event 3000 MessageReceived (durable,
   just before the 250) to event 2448 Sent (delivered, flushed and recorded) is accept ->
   delivered; the client measures DATA-to-250 (final "." written to the reply read).

Cases: maildir (default): the postoffice connector delivers into MS:BENCH/PO/U1; relay: the
smarthost connector relays to Postfix's smtp-sink. The stages table splits accept -> delivered
(see bench/timeline.py) and gives each stage's mean over the slowest 1 %, which says where a
missed p99 comes from; a bench-only hook in the service (timeline.HOOK, --no-hook leaves it
out) splits it finer: claim, flush and record times per batch. Each run's line also says in
which seconds the messages over 50 ms were accepted (a burst, e.g. another job's CPU, or all
along), the CPU that mailgate, the client and the rest of the machine used meanwhile, and the
share of that time some task waited for CPU or IO (Linux PSI, /proc/pressure: "some").
The output ends with markdown tables for docs/performance.md, headed by the command, date,
machine and `git describe`. Exit status 1 if a run failed (not for a miss).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paced
import timeline
from mailgate_instance import (
    CONFIG,
    Mailgate,
    add_mailgate_options,
    mailgate_env,
    mailgate_origin,
    setting_arg,
    with_setting,
    with_settings,
)
from measure import (
    BenchError,
    SmtpSink,
    add_run_options,
    busy_fraction,
    command_text,
    git_describe,
    host_cpu_jiffies,
    journal_note,
    new_run_dir,
    other_cpu,
    percentile,
    remove_leftovers,
    smtp_source,
    user_sys_cpu,
    wait_delivered,
    wait_for_quiet,
)

TARGET_MS = 50.0
MAILBOX = "u1@po.bench.bench.test"  # MS:BENCH/PO/U1
RELAY_RECIPIENT = "r1@relay.example"
# Both events of the measurement must be written (they are at the default levels; said
# explicitly so that a change of defaults cannot silently empty the figures).
LEVELS = ('Sent = "maximum"', 'Receive = "medium"')
# accept -> delivered in stages: (name, from, to), fields of timeline.Timeline.
STAGES = (
    ("DATA end -> durable (3000)", "received", "accepted"),
    ("3000 -> delivery start", "accepted", "started"),
    ("delivery of the message", "started", "finished"),
    ("delivery end -> Sent (rest of batch, flush, record)", "finished", "sent"),
)
# The same, finer, from the bench's hook (timeline.HOOK) in the interchange threads.
FINE_STAGES = (
    ("3000 -> claim submitted (thread busy with the batch before, or waking up)", "accepted",
     "claim_submitted"),
    ("claim commit", "claim_submitted", "claimed"),
    ("claimed -> delivery start (earlier messages of the batch)", "claimed", "started"),
    ("delivery of the message", "started", "finished"),
    ("delivery end -> flush start (later messages of the batch)", "finished", "flush_started"),
    ("flush (postoffice: fsync of the files and new/)", "flush_started", "flushed"),
    ("flush end -> record submitted", "flushed", "record_submitted"),
    ("record commit", "record_submitted", "recorded"),
    ("record committed -> Sent", "recorded", "sent"),
)  # fmt: skip


@dataclass
class Run:
    index: int
    max_rate: float = 0.0
    max_note: str = ""
    rate: float = 0.0  # offered
    client: paced.PacedResult | None = None
    counted: list[paced.Sent] = field(default_factory=list)  # accepted after the warm-up
    accepted_rate: float = 0.0  # of the counted ones
    delivered: int = 0
    timelines: list[timeline.Timeline] = field(default_factory=list)
    host_busy: float = 0.0
    cpu: str = ""  # CPU seconds of mailgate, the client and everything else in the paced phase
    contention: str = "-"  # others' CPU and the PSI stall shares, for the table
    errors: list[str] = field(default_factory=list)

    def e2e(self) -> list[float]:
        return [t.sent - t.accepted for t in self.timelines if t.sent and t.accepted]

    def data_to_250(self) -> list[float]:
        return [s.data_to_250 for s in self.counted]

    def lags(self) -> list[float]:
        return [s.lag for s in self.counted]

    def delivered_rate(self) -> float:
        done = [t for t in self.timelines if t.sent and t.accepted]
        if not done:
            return 0.0
        span = max(t.sent for t in done if t.sent) - min(t.accepted for t in done if t.accepted)
        return len(done) / span if span > 0 else 0.0


# --- one instance -----------------------------------------------------------------------------


def pressure_totals() -> dict[str, int]:
    """Microseconds some task waited for CPU / IO since boot (Linux PSI; {} without it)."""
    found = {}
    for resource_name in ("cpu", "io"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            some = Path(f"/proc/pressure/{resource_name}").read_text().splitlines()[0]
            found[resource_name] = int(some.rsplit("total=", 1)[1])
    return found


def pressure(before: dict[str, int], after: dict[str, int], seconds: float) -> str:
    """Share of the time some task was stalled waiting, per resource: how contended it was."""
    parts = [
        f"{name} {(after[name] - before[name]) / 1e6 / seconds:.0%}"
        for name in before
        if name in after and seconds > 0
    ]
    return "PSI some " + ", ".join(parts) if parts else "no PSI"


def config(args: argparse.Namespace) -> str:
    text = CONFIG
    for line in LEVELS:
        text = with_setting(text, "log.levels", line)
    if args.postoffice_threads:
        text = with_setting(text, "postoffice", f"threads = {args.postoffice_threads}")
    return with_settings(text, args.set)


@contextlib.contextmanager
def instance(
    args: argparse.Namespace, name: str, run: Run
) -> Iterator[tuple[Mailgate, SmtpSink | None]]:
    """A started mailgate (and smtp-sink with --case relay); stopped at the end."""
    root = new_run_dir(f"latency-{name}-", args.tmp_dir, args.keep)
    hook = None
    if name == "paced" and args.hook:
        hook = timeline.install_hook(root / "hook", mailgate_env(args.src).get("PYTHONPATH", ""))
    mg = Mailgate(
        root, args.python, src=args.src, config=config(args), commit_stats=False, service_env=hook
    )
    sink = None
    try:
        if mg.add_mailboxes()[0] != MAILBOX:
            raise BenchError(f"mailgate did not name MS:BENCH/PO/U1 {MAILBOX}")
        if args.case == "relay":
            sink = SmtpSink(args.smtp_sink)
            mg.smarthost = f"127.0.0.1:{sink.port}"
        mg.start()
        yield mg, sink
    finally:
        status = mg.stop(args.stop_timeout)
        if status != 0:
            run.errors.append(f"mailgate stop ({name}): exit status {status}; {mg.stderr()[-300:]}")
        if sink is not None:
            sink.stop()


def recipient(args: argparse.Namespace) -> str:
    return RELAY_RECIPIENT if args.case == "relay" else MAILBOX


def wait_all(
    args: argparse.Namespace, mg: Mailgate, sink: SmtpSink | None, expected: int
) -> tuple[int, float]:
    """Wait until `expected` messages are delivered; (count, wall time of the last one)."""
    if sink is not None:
        return sink.wait_received(expected, args.deliver_timeout)
    return wait_delivered(mg.new_dirs()[:1], expected, args.deliver_timeout, mg.alive)


def accepted_count(mg: Mailgate, expected: int) -> int:
    """Events 3000 in the log (they reach it a moment after the 250s): until all or settled."""
    deadline, last, count = time.monotonic() + 10, -1, 0
    while time.monotonic() < deadline:
        count = mg.received_events()[0]
        if count >= expected or count == last:
            break
        last = count
        time.sleep(0.2)
    return count


# --- the two phases ---------------------------------------------------------------------------


def find_max(args: argparse.Namespace, run: Run) -> None:
    with instance(args, "max", run) as (mg, sink):
        wall = time.time()
        source = smtp_source(
            mg.port,
            sessions=args.sessions,
            messages=args.max_messages,
            length=args.size,
            sender=paced.SENDER,
            recipient=recipient(args),
            timeout=args.timeout,
            path=args.smtp_source,
        )
        if source.error:
            run.errors.append(source.error)
        accepted = accepted_count(mg, args.max_messages)
        delivered, last = wait_all(args, mg, sink, accepted)
        if delivered < accepted:
            run.errors.append(f"max phase: {delivered} of {accepted} delivered by the deadline")
        run.max_rate = delivered / max(last - wall, 1e-9)
        run.max_note = (
            f"smtp-source -d -s {args.sessions} -m {args.max_messages} -l {args.size}: "
            f"{accepted} accepted in {source.seconds:.1f} s, {delivered} delivered at "
            f"{run.max_rate:.0f} msg/s end to end"
        )


def paced_phase(args: argparse.Namespace, run: Run) -> None:
    with instance(args, "paced", run) as (mg, sink):
        host_before, server_before = host_cpu_jiffies(), mg.cpu_seconds()
        client_before = user_sys_cpu(resource.RUSAGE_SELF)
        psi_before, wall_before = pressure_totals(), time.monotonic()
        result = asyncio.run(
            paced.drive(
                mg.port,
                recipient(args),
                rate=run.rate,
                seconds=args.warmup + args.seconds,
                connections=args.connections,
                size=args.size,
            )
        )
        host_after = host_cpu_jiffies()
        server = mg.cpu_seconds() - server_before
        client = user_sys_cpu(resource.RUSAGE_SELF) - client_before
        run.host_busy = busy_fraction(host_before, host_after)
        others = other_cpu(host_before, host_after, server + client)
        psi = pressure(psi_before, pressure_totals(), time.monotonic() - wall_before)
        run.cpu = f"mailgate {server:.1f} s, client {client:.1f} s, others ~{others:.1f} s; {psi}"
        seconds = time.monotonic() - wall_before
        run.contention = f"{others / seconds:.1f} cores; {psi.removeprefix('PSI some ')}"
        run.client = result
        run.errors += result.errors
        run.delivered, _ = wait_all(args, mg, sink, len(result.sent))
        if run.delivered < len(result.sent):
            run.errors.append(f"paced: {run.delivered} of {len(result.sent)} delivered in time")
    # Stopped: the event log is complete and the queue file quiet.
    found = timeline.read(mg.data_dir)
    if args.hook and not timeline.read_hook(mg.root / "hook", found):
        print("  note: the stage hook recorded nothing (the code it wraps changed?)", flush=True)
    counting = result.started + args.warmup
    run.counted = [s for s in result.sent if s.due >= counting]
    run.accepted_rate = len(run.counted) / max(result.finished - counting, 1e-9)
    run.timelines = [found[s.queue_id] for s in run.counted if s.queue_id in found]
    missing = len(run.counted) - sum(1 for t in run.timelines if t.complete)
    if missing:
        run.errors.append(f"{missing} accepted message(s) without a complete timeline")


def one_run(args: argparse.Namespace, index: int) -> Run:
    run = Run(index)
    try:
        if args.rate:
            run.max_rate, run.max_note = 0.0, "rate given (--rate)"
            run.rate = args.rate
        else:
            quiet(args)
            find_max(args, run)
            run.rate = run.max_rate * args.fraction
        if run.rate > 0:
            quiet(args)
            paced_phase(args, run)
    except BenchError as exc:
        run.errors.append(str(exc))
    return run


def quiet(args: argparse.Namespace) -> None:
    if args.quiet_timeout > 0:
        busy = wait_for_quiet(0.10, args.quiet_timeout)
        if busy > 0.10:
            print(f"  warning: host still {busy:.0%} busy before the phase", flush=True)


# --- figures ----------------------------------------------------------------------------------


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.1f}" if values else "-"


def spread(values: list[float]) -> str:
    """p50 / p90 / p99 / max in ms."""
    if not values:
        return "-"
    return " / ".join(ms(values, p) for p in (50, 90, 99)) + f" / {max(values) * 1000:.1f}"


def verdict(run: Run) -> str:
    e2e = run.e2e()
    if not e2e:
        return "-"
    p99 = percentile(e2e, 99) * 1000
    return f"yes ({p99:.1f} ms)" if p99 < TARGET_MS else f"**no** ({p99:.1f} ms)"


def slow_seconds(run: Run) -> str:
    """How the misses spread over the paced phase: seconds (by acceptance) holding a message
    over the target, and the worst second; a burst (another job's CPU) or all along."""
    done = [t for t in run.timelines if t.sent and t.accepted]
    if not done:
        return "-"
    first = min(float(t.accepted or 0) for t in done)
    by_second: dict[int, list[float]] = {}
    for t in done:
        by_second.setdefault(int(float(t.accepted or 0) - first), []).append(
            float(t.sent or 0) - float(t.accepted or 0)
        )
    slow = sorted(s for s, values in by_second.items() if max(values) * 1000 > TARGET_MS)
    worst = max(by_second, key=lambda s: max(by_second[s]))
    return (
        f"{len(slow)} of {len(by_second)} seconds hold a message over {TARGET_MS:.0f} ms"
        + (f" (seconds {', '.join(map(str, slow))})" if slow else "")
        + f"; worst second {worst}: max {max(by_second[worst]) * 1000:.0f} ms"
    )


def run_line(run: Run, total: int) -> str:
    client = run.client
    sent = len(client.sent) if client else 0
    offered = client.offered if client else 0
    counted = len(run.counted)
    lags = run.lags()
    late = sum(1 for lag in lags if lag > 0.005)
    return (
        f"  run {run.index}/{total}: max {run.max_rate:.0f} msg/s ({run.max_note}); offered "
        f"{run.rate:.0f} msg/s ({offered} messages), accepted {sent}, delivered {run.delivered}; "
        f"after the warm-up: {counted} accepted at {run.accepted_rate:.0f} msg/s, delivered at "
        f"{run.delivered_rate():.0f} msg/s; accept->delivered p50/p90/p99/max "
        f"{spread(run.e2e())} ms; DATA-to-250 {spread(run.data_to_250())} ms; client lag "
        f"p99 {ms(lags, 99)} max {max(lags, default=0) * 1000:.1f} ms, {late} taken > 5 ms late; "
        f"host busy {run.host_busy:.0%} (CPU: {run.cpu}); "
        f"p99 < {TARGET_MS:.0f} ms: {verdict(run)}; {slow_seconds(run)}"
        + "".join(f"\n    error: {e}" for e in run.errors)
    )


def batches(run: Run, p: float) -> str:
    sizes = [float(t.batch) for t in run.timelines if t.hooked]
    return f"{percentile(sizes, p):.0f}" if sizes else "-"


def gap(t: timeline.Timeline, start: str, end: str) -> float:
    return float(getattr(t, end)) - float(getattr(t, start))


def stage_rows(run: Run, stages: tuple[tuple[str, str, str], ...], fine: bool) -> list[str]:
    done = [t for t in run.timelines if (t.hooked if fine else t.complete)]
    if not done:
        return []
    e2e = sorted(done, key=lambda t: gap(t, "accepted", "sent"))
    tail = e2e[int(len(e2e) * 0.99) :] or e2e[-1:]
    rows = []
    for name, start, end in stages:
        values = [gap(t, start, end) for t in done]
        tail_mean = statistics.mean(gap(t, start, end) for t in tail) * 1000
        rows.append(f"| {run.index} | {name} | {spread(values)} | {tail_mean:.1f} |")
    return rows


def print_tables(args: argparse.Namespace, runs: list[Run], origin: str) -> None:
    pace = f"{args.rate:g} msg/s (--rate)" if args.rate else f"{args.fraction:g} x the maximum"
    maximum = (
        "not measured"
        if args.rate
        else f"smtp-source -d -s {args.sessions} -m {args.max_messages} -l {args.size}, end to end"
    )
    print()
    print(f"Command: `{command_text('latency.py', args.argv)}`  ")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {platform.machine()} "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, mailgate {git_describe()} from "
        f"{origin}; case {args.case}; paced: {args.connections} sessions, {args.seconds:g} s "
        f"counted after a {args.warmup:g} s warm-up, at {pace}, {args.size}-byte messages; "
        f"maximum: {maximum}.  "
    )
    print()
    print(
        "| run | max msg/s | offered msg/s | accepted msg/s | delivered msg/s "
        "| accept -> delivered p50 / p90 / p99 / max ms | DATA-to-250 p50 / p90 / p99 / max ms "
        "| client lag p99 / max ms | other processes; PSI some | p99 < 50 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for run in runs:
        lags = run.lags()
        print(
            f"| {run.index} | {f'{run.max_rate:.0f}' if run.max_rate else '-'} | {run.rate:.0f} "
            f"| {run.accepted_rate:.0f} | {run.delivered_rate():.0f} "
            f"| {spread(run.e2e())} | {spread(run.data_to_250())} "
            f"| {ms(lags, 99)} / {max(lags, default=0) * 1000:.1f} | {run.contention} "
            f"| {verdict(run)} |"
        )
    print()
    print("| run | stage | p50 / p90 / p99 / max ms | mean over the slowest 1 %, ms |")
    print("|---:|---|---:|---:|")
    for run in runs:
        for row in stage_rows(run, STAGES, fine=False):
            print(row)
    fine = [row for run in runs for row in stage_rows(run, FINE_STAGES, fine=True)]
    if fine:
        print()
        sizes = "; ".join(
            f"run {r.index}: p50 {batches(r, 50)}, p99 {batches(r, 99)}" for r in runs
        )
        print(
            "Finer, from the bench's hook in the interchange threads (recipients per claimed "
            f"batch, {sizes}):"
        )
        print()
        print("| run | stage | p50 / p90 / p99 / max ms | mean over the slowest 1 %, ms |")
        print("|---:|---|---:|---:|")
        for row in fine:
            print(row)
    failed = [run.index for run in runs if run.errors]
    if failed:
        print(f"\nRun(s) {', '.join(map(str, failed))} had errors (see above).")


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--case", choices=("maildir", "relay"), default="maildir")
    p.add_argument("--rate", type=float, default=0.0, help="paced rate; skips the maximum phase")
    p.add_argument("--fraction", type=float, default=0.5, help="paced rate / maximum rate")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the paced phase")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="paced seconds sent first and not counted"
    )
    p.add_argument("--connections", type=int, default=10, help="sessions of the paced client")
    p.add_argument("--max-messages", type=int, default=3000, help="smtp-source -m (max phase)")
    p.add_argument("--sessions", type=int, default=10, help="smtp-source -s (max phase)")
    p.add_argument("--size", "-l", type=int, default=5120, help="message size, bytes")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument(
        "--no-hook",
        dest="hook",
        action="store_false",
        help="no stage hook in the paced phase (timeline.HOOK): no finer split",
    )
    p.add_argument("--postoffice-threads", type=int, default=0, help="[postoffice] threads")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=setting_arg,
        help="a service setting: 'section: key = value'",
    )
    add_mailgate_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    args.argv = argv
    if (
        args.runs < 1
        or args.connections < 1
        or args.seconds <= 0
        or args.fraction <= 0
        or args.warmup < 0
    ):
        p.error("--runs, --connections, --seconds and --fraction must be positive")
    if args.timeout is None:
        args.timeout = 120.0 + args.max_messages / 10
    if args.deliver_timeout is None:
        args.deliver_timeout = 60.0 + args.max_messages / 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so every `finally` (stop the servers, remove the data) runs

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        origin = mailgate_origin(args.python, args.src)
        print(f"mailgate from {origin} (run by {args.python})", flush=True)
        note = journal_note(args.tmp_dir or tempfile.gettempdir())
        if note:
            print(note, flush=True)
        runs = []
        for index in range(1, args.runs + 1):
            runs.append(one_run(args, index))
            print(run_line(runs[-1], args.runs), flush=True)
        print_tables(args, runs, origin)
        return 1 if any(run.errors for run in runs) else 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_leftovers()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
