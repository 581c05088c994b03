"""mailgate against Postfix on the same machine, the same load and the same durability.

    .venv/bin/python bench/vs_postfix.py [--cases accept,maildir,relay] [--sessions 1,10,50]
        [--messages 5000] [--size 5120] [--runs 3] [--flush-delay-us N]
    .venv/bin/python bench/vs_postfix.py --big-queue [N]        (see bench/big_queue.py)

Both servers get the same load: Postfix's smtp-source (`-d -s SESSIONS -m MESSAGES -l SIZE`,
one recipient, loopback), and both answer 250 only after an fsync (Postfix fsyncs each queue
file before replying; mailgate's queue commits are synchronous=FULL). Three cases:

- accept: accept only. Postfix puts every message on hold (`smtpd_recipient_restrictions =
  check_client_access static:HOLD`: cleanup files it straight into the hold queue and qmgr
  never sees it; the cheapest standard way, it costs one extra log line per message);
  mailgate runs with its postoffice connector paused (`mailgate ctl pause postoffice`).
- maildir: accept and deliver into one Maildir: Postfix's virtual(8), mailgate's postoffice.
- relay: accept and relay to Postfix's smtp-sink: Postfix's smtp(8) with a numeric relayhost,
  mailgate's smarthost connector (`--smarthost`).

Each (case, sessions) pair runs `--runs` times, mailgate and Postfix alternating (and which
goes first alternating too), each on a fresh instance in a fresh directory; every figure is
the median of the runs. Accept rate: messages answered 250 / smtp-source's run time. End to
end: messages delivered (Maildir new/ or smtp-sink's count) / time from starting smtp-source
to the last delivery. CPU ms per message: the server's whole process tree (master, workers or
daemons, including the reaped ones) over the same window. Flushes per message: every fsync,
fdatasync (and syncfs, msync, sync_file_range) made by either server, counted by the flush
shim (bench/flushdelay.c, LD_PRELOAD; with a 0 us delay it only counts). mailgate's p50/p99
DATA-to-250: the server's side, from handle_DATA being called (the final "." read) to its
reply, recorded by the bench's sitecustomize hook (bench/mailgate_instance.py).

`--flush-delay-us N` runs both servers under the shim sleeping N us after every flush, in
the flushing thread only (a disk whose cache flush costs N us more, with independent flushes
running in parallel, as on a network block device). Postfix's master passes only listed
variables to its daemons: the instance's import_environment carries the shim's.

mailgate's per-address session limit ([smtp] max_sessions_per_ip = 20) refused 50 sessions
from one address in trees before issue 14.4 (it counted per receive process and exempted no
one): for runs above 20 sessions the bench raises it in the configuration it writes, and
says so, so that `--src` can run such a tree. Since, loopback is in relay_networks, exempt.
The output ends with a markdown table for docs/performance.md, headed by the command that
produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flushshim import FlushCounter, FlushShim, describe
from mailgate_instance import (
    CONFIG,
    ROOT,
    Mailgate,
    add_mailgate_options,
    mailgate_origin,
    with_setting,
)
from measure import (
    LEFTOVERS,
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
    run_option_defaults,
    smtp_source,
    tree_cpu_seconds,
    wait_delivered,
    wait_for_quiet,
)

sys.path.insert(0, str(ROOT))  # tests.support.postfix: the private Postfix the tests use too
from tests.support.postfix import PostfixError, PostfixInstance

CASES = ("accept", "maildir", "relay")
CASE_NAMES = {
    "accept": "accept only",
    "maildir": "accept + deliver into a Maildir",
    "relay": "accept + relay to smtp-sink",
}
SENDER = "sender@bench.test"
MAILBOX = "u1@po.bench.bench.test"  # mailgate's MS:BENCH/PO/U1; Postfix gets the same address
RELAY_RECIPIENT = "r1@relay.example"
DEFAULT_PER_IP = 20


@dataclass
class Run:
    side: str  # "mailgate" or "postfix"
    case: str
    sessions: int
    messages: int
    accepted: int = 0
    delivered: int = 0  # accept case: messages found held or queued
    accept_seconds: float = 0.0
    e2e_seconds: float = 0.0
    cpu_seconds: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0
    host_busy: float = 0.0
    flushes: dict[str, int] | None = None
    latencies: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.accept_seconds if self.accept_seconds > 0 else 0.0

    @property
    def e2e_rate(self) -> float | None:
        if self.case == "accept":
            return None
        return self.delivered / self.e2e_seconds if self.e2e_seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / self.accepted * 1000 if self.accepted else 0.0

    @property
    def flushes_per_message(self) -> float | None:
        if self.flushes is None or not self.accepted:
            return None
        return sum(self.flushes.values()) / self.accepted

    @property
    def ok(self) -> bool:
        return (
            not self.errors and self.accepted == self.messages and (self.delivered >= self.accepted)
        )


# --- one run of one side ------------------------------------------------------------------------


class Window:
    """CPU, host and flush counts from the start of the load to the end of delivery."""

    def __init__(self, cpu: Callable[[], float], counter: FlushCounter | None) -> None:
        self.cpu, self.counter = cpu, counter
        self.cpu_before = cpu()
        self.flushes_before = counter.read() if counter else None
        self.host_before = host_cpu_jiffies()
        self.wall = time.time()
        self.host_accept = self.host_before

    def accepted(self) -> None:
        self.host_accept = host_cpu_jiffies()

    def close(self, run: Run) -> None:
        run.cpu_seconds = self.cpu() - self.cpu_before
        run.host_busy = busy_fraction(self.host_before, self.host_accept)
        run.other_cpu = other_cpu(
            self.host_before, host_cpu_jiffies(), run.cpu_seconds + run.client_cpu
        )
        if self.counter is not None and self.flushes_before is not None:
            after = self.counter.read()
            run.flushes = {k: after[k] - self.flushes_before[k] for k in after}


def load(args: argparse.Namespace, port: int, recipient: str, run: Run, window: Window) -> None:
    source = smtp_source(
        port,
        sessions=run.sessions,
        messages=run.messages,
        length=args.size,
        sender=SENDER,
        recipient=recipient,
        timeout=args.timeout,
        path=args.smtp_source,
    )
    window.accepted()
    run.accept_seconds, run.client_cpu = source.seconds, source.client_cpu
    if source.error:
        run.errors.append(source.error)


def finish_delivery(
    args: argparse.Namespace,
    run: Run,
    window: Window,
    maildir: Path,
    sink: SmtpSink | None,
    alive: Callable[[], bool],
) -> None:
    if run.case == "maildir":
        run.delivered, last = wait_delivered([maildir], run.accepted, args.deliver_timeout, alive)
    elif sink is not None:
        run.delivered, last = sink.wait_received(run.accepted, args.deliver_timeout)
    else:
        return
    run.e2e_seconds = max(last - window.wall, 1e-9)
    if run.delivered < run.accepted:
        run.errors.append(f"only {run.delivered} of {run.accepted} delivered before the deadline")


def run_mailgate(args: argparse.Namespace, case: str, sessions: int, shim: FlushShim | None) -> Run:
    run = Run("mailgate", case, sessions, args.messages)
    config = CONFIG
    if args.postoffice_threads:
        config = with_setting(config, "postoffice", f"threads = {args.postoffice_threads}")
    if sessions > DEFAULT_PER_IP:
        config = with_setting(config, "smtp", f"max_sessions_per_ip = {sessions}")
        run.notes.append(
            f"[smtp] max_sessions_per_ip raised from {DEFAULT_PER_IP} to {sessions}: "
            "trees before issue 14.4 refuse more sessions from one address per receive process "
            "(since, loopback is in relay_networks and exempt: the setting is then unused)"
        )
    root = new_run_dir(f"vs-mailgate-{case}-", args.tmp_dir, args.keep)
    counter = shim.counter(root.name) if shim else None
    mg = Mailgate(
        root,
        args.python,
        src=args.src,
        config=config,
        service_env=shim.environment(counter) if shim and counter else None,
    )
    sink = None
    try:
        sink = SmtpSink(args.smtp_sink) if case == "relay" else None
        mailbox = mg.add_mailboxes()[0]
        if mailbox != MAILBOX:
            raise BenchError(f"mailgate named MS:BENCH/PO/U1 {mailbox}, expected {MAILBOX}")
        if sink is not None:
            mg.smarthost = f"127.0.0.1:{sink.port}"
        mg.start()
        if case == "accept":
            mg.set_paused("postoffice", True)
        window = Window(mg.cpu_seconds, counter)
        load(args, mg.port, RELAY_RECIPIENT if sink else MAILBOX, run, window)
        run.accepted = mailgate_accepted(mg, run)
        finish_delivery(args, run, window, mg.new_dirs()[0], sink, mg.alive)
        check_preloaded(shim, list(mg.pids()), run)
        if case == "accept":
            run.delivered = int(mg.queue_state("postoffice").get("queued", 0))
            if any(mg.new_dirs()[0].iterdir()):
                run.errors.append("mailgate delivered while its postoffice connector was paused")
        window.close(run)
    finally:
        status = mg.stop(args.stop_timeout)
        if status != 0:
            run.errors.append(f"mailgate stop: exit status {status}; {mg.stderr()[-300:]}")
        run.latencies = (mg.read_commit_stats() or {}).get("latencies", [])
        if sink is not None:
            sink.stop()
    return run


def check_preloaded(shim: FlushShim | None, pids: list[int], run: Run) -> None:
    """Every process of the server must run under the shim, or its flushes escape it."""
    lacking = shim.missing(pids) if shim else []
    if lacking:
        run.errors.append(f"running without the flush shim: {'; '.join(lacking)}")


def mailgate_accepted(mg: Mailgate, run: Run) -> int:
    """Messages mailgate answered 250 (its MessageReceived events, which reach the log through
    the master a moment after the reply: wait until all are there or the count settles)."""
    deadline, last, count = time.monotonic() + 10, -1, 0
    while time.monotonic() < deadline:
        count = mg.received_events()[0]
        if count >= run.messages or (count == last and run.errors):
            break
        last = count
        time.sleep(0.1)
    return count


def run_postfix(args: argparse.Namespace, case: str, sessions: int, shim: FlushShim | None) -> Run:
    run = Run("postfix", case, sessions, args.messages)
    root = new_run_dir(f"vs-postfix-{case}-", args.tmp_dir, args.keep)
    counter = shim.counter(root.name) if shim else None
    sink = SmtpSink(args.smtp_sink) if case == "relay" else None
    try:
        pf = PostfixInstance(
            root,
            mailboxes=[] if sink else [MAILBOX],
            relayhost=f"127.0.0.1:{sink.port}" if sink else None,
            hold=case == "accept",
            environment=shim.environment(counter) if shim and counter else None,
            postfix=args.postfix,
        )
    except BaseException:
        if sink is not None:
            sink.stop()
        raise
    try:
        pf.start()
        window = Window(lambda: tree_cpu_seconds(pf.master_pid()), counter)
        load(args, pf.port, RELAY_RECIPIENT if sink else MAILBOX, run, window)
        run.accepted = run.messages if not run.errors else pf.accepted()
        finish_delivery(args, run, window, pf.maildir(MAILBOX) / "new", sink, pf.alive)
        check_preloaded(shim, pf.processes(), run)
        if case == "accept":
            run.delivered = pf.queue_count("hold")
        window.close(run)
    except PostfixError as exc:
        run.errors.append(str(exc))
    finally:
        problem = pf.stop(args.stop_timeout)
        if problem:
            run.errors.append(problem)
        if sink is not None:
            sink.stop()
    return run


# --- many runs, medians, the table --------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Summary:
    case: str
    sessions: int
    runs: dict[str, list[Run]]

    def value(self, side: str, what: Callable[[Run], float | None]) -> float | None:
        return median([what(r) for r in self.runs.get(side, []) if r.ok])

    def ratio(self, what: Callable[[Run], float | None]) -> float | None:
        mine, theirs = self.value("mailgate", what), self.value("postfix", what)
        return mine / theirs if mine is not None and theirs else None

    def latency(self, p: float) -> float | None:
        return self.value(
            "mailgate", lambda r: percentile(r.latencies, p) * 1000 if r.latencies else None
        )


def fmt(value: float | None, pattern: str = "{:.0f}") -> str:
    return "-" if value is None else pattern.format(value)


TABLE_HEADER = (
    "| case | sessions | mailgate accept msg/s | Postfix accept msg/s | ratio "
    "| mailgate end-to-end msg/s | Postfix end-to-end msg/s | ratio "
    "| CPU ms/msg mailgate / Postfix | flushes/msg mailgate / Postfix "
    "| mailgate DATA-to-250 p50 / p99 ms |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(s: Summary) -> str:
    def accept(r: Run) -> float:
        return r.accept_rate

    def e2e(r: Run) -> float | None:
        return r.e2e_rate

    def cpu(r: Run) -> float:
        return r.cpu_ms

    def flushes(r: Run) -> float | None:
        return r.flushes_per_message

    cells = [
        CASE_NAMES[s.case],
        str(s.sessions),
        fmt(s.value("mailgate", accept)),
        fmt(s.value("postfix", accept)),
        fmt(s.ratio(accept), "{:.2f}x"),
        fmt(s.value("mailgate", e2e)),
        fmt(s.value("postfix", e2e)),
        fmt(s.ratio(e2e), "{:.2f}x"),
        f"{fmt(s.value('mailgate', cpu), '{:.2f}')} / {fmt(s.value('postfix', cpu), '{:.2f}')}",
        f"{fmt(s.value('mailgate', flushes), '{:.2f}')} / "
        f"{fmt(s.value('postfix', flushes), '{:.2f}')}",
        f"{fmt(s.latency(50), '{:.1f}')} / {fmt(s.latency(99), '{:.1f}')}",
    ]
    return "| " + " | ".join(cells) + " |"


def run_line(index: int, total: int, r: Run) -> str:
    e2e = "" if r.e2e_rate is None else f", end to end {r.e2e_rate:.1f} msg/s"
    fpm = r.flushes_per_message
    flushes = "" if fpm is None else f", {fpm:.2f} flushes/msg {compact(r.flushes)}"
    latency = ""
    if r.latencies:
        p50, p99 = percentile(r.latencies, 50) * 1000, percentile(r.latencies, 99) * 1000
        latency = f", DATA-to-250 p50 {p50:.1f} p99 {p99:.1f} ms"
    return (
        f"  run {index}/{total} {r.case} sessions={r.sessions} {r.side}: accepted "
        f"{r.accepted}/{r.messages} at {r.accept_rate:.1f} msg/s{e2e}{latency}; CPU "
        f"{r.cpu_ms:.2f} ms/msg{flushes}; client CPU {r.client_cpu:.2f}s, host busy "
        f"{r.host_busy:.0%}, other processes ~{r.other_cpu:.1f}s"
        + "".join(f"\n    note: {n}" for n in r.notes)
        + "".join(f"\n    error: {e}" for e in r.errors)
    )


def compact(flushes: dict[str, int] | None) -> str:
    return "(" + " ".join(f"{k}={v}" for k, v in (flushes or {}).items() if v) + ")"


def run_matrix(args: argparse.Namespace, shim: FlushShim | None) -> list[Summary]:
    sides = {"mailgate": run_mailgate, "postfix": run_postfix}
    summaries = []
    for case in args.cases:
        for sessions in args.sessions:
            summary = Summary(case, sessions, {"mailgate": [], "postfix": []})
            for index in range(1, args.runs + 1):
                order = ["mailgate", "postfix"] if index % 2 else ["postfix", "mailgate"]
                for side in order:
                    if args.quiet_timeout > 0:
                        busy = wait_for_quiet(0.10, args.quiet_timeout)
                        if busy > 0.10:
                            print(f"  warning: host still {busy:.0%} busy before the run")
                    try:
                        r = sides[side](args, case, sessions, shim)
                    except BenchError as exc:
                        r = Run(side, case, sessions, args.messages, errors=[str(exc)])
                    summary.runs[side].append(r)
                    print(run_line(index, args.runs, r), flush=True)
            summaries.append(summary)
    return summaries


def print_table(args: argparse.Namespace, summaries: list[Summary], origin: str) -> None:
    command = command_text("vs_postfix.py", args.argv)
    disk = f"flush +{args.flush_delay_us} us (shim)" if args.flush_delay_us else "this disk"
    print()
    print(f"Command: `{command}`  ")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {platform.machine()} "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, {postfix_version(args.postfix)}, "
        f"mailgate {git_describe()} from {origin}; {disk}; smtp-source -d -m {args.messages} "
        f"-l {args.size}, one recipient; median of {args.runs} alternating run(s).  "
    )
    if args.runs < 3 or args.messages < 5000:
        print("**Smoke figures (too few runs or messages): not for comparison.**  ")
    print()
    print(TABLE_HEADER)
    for s in summaries:
        print(table_row(s))
    failed = sum(1 for s in summaries for runs in s.runs.values() for r in runs if not r.ok)
    if failed:
        print(f"\n{failed} run(s) failed and are left out of the medians (see above).")
    if any(s.sessions > DEFAULT_PER_IP for s in summaries):
        print(
            f"\nmailgate ran with [smtp] max_sessions_per_ip raised to the session count for "
            f"runs above {DEFAULT_PER_IP} sessions (trees before issue 14.4 refuse them; since, "
            f"loopback clients are exempt and the setting is unused)."
        )


def postfix_version(postfix: str) -> str:
    postconf = str(Path(postfix).with_name("postconf"))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        )
        return f"Postfix {out.stdout.strip()}"
    return "Postfix ?"


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: accept,maildir,relay")
    p.add_argument("--sessions", default="1,10,50", help="comma-separated session counts")
    p.add_argument("--messages", "-m", type=int, default=5000, help="messages per run")
    p.add_argument("--size", "-l", type=int, default=5120, help="smtp-source -l (body bytes)")
    p.add_argument("--runs", type=int, default=3, help="runs per side, alternating")
    p.add_argument(
        "--flush-delay-us",
        type=int,
        default=0,
        help="run both servers under the shim sleeping this long after every flush",
    )
    p.add_argument(
        "--no-shim", action="store_true", help="no LD_PRELOAD at all (flushes not counted)"
    )
    p.add_argument(
        "--postoffice-threads", type=int, default=0, help="mailgate [postoffice] threads"
    )
    p.add_argument(
        "--big-queue",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="N",
        help="instead: the big-queue measurements with N queued messages (default 1,000,000)",
    )
    p.add_argument("--big-queue-size", type=int, default=500, help="body bytes of queued messages")
    p.add_argument(
        "--big-queue-deliver", type=int, default=20000, help="deliveries timed once resumed"
    )
    add_mailgate_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    args.argv = argv
    args.cases = [c for c in args.cases.split(",") if c]
    args.sessions = [int(s) for s in args.sessions.split(",") if s]
    if not set(args.cases) <= set(CASES):
        p.error(f"--cases: choose from {', '.join(CASES)}")
    if min(args.sessions) < 1 or args.messages < 1 or args.runs < 1:
        p.error("--sessions, --messages and --runs must be >= 1")
    if args.no_shim and args.flush_delay_us:
        p.error("--flush-delay-us needs the shim")
    run_option_defaults(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so every `finally` (stop the servers, remove the data) runs

    signal.signal(signal.SIGTERM, on_sigterm)
    build = Path(tempfile.mkdtemp(prefix="vs-postfix-shim-", dir=args.tmp_dir))
    LEFTOVERS.append(build)
    try:
        origin = mailgate_origin(args.python, args.src)
        print(f"mailgate from {origin} (run by {args.python})", flush=True)
        note = journal_note(args.tmp_dir or tempfile.gettempdir())
        if note:
            print(note, flush=True)
        shim = None if args.no_shim else FlushShim(build, args.flush_delay_us)
        print(describe(shim, shim.check() if shim else 0.0), flush=True)
        if args.big_queue is not None:
            import big_queue

            return big_queue.main(args, shim)
        summaries = run_matrix(args, shim)
        print_table(args, summaries, origin)
        return 0 if all(r.ok for s in summaries for v in s.runs.values() for r in v) else 1
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_leftovers()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
