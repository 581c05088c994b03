"""Where a message's DATA-to-250 goes in the receive worker's group commit, stage by stage.

    .venv/bin/python bench/commit_stages.py [--sessions 10] [--messages 6000]
        [--set 'processes: receive = 1'] [--syscalls SECONDS] [--flush-delay-us N] [--src DIR]

Accept only (the postoffice connector paused), driven by smtp-source. A sitecustomize hook
put first on the service's PYTHONPATH times each message's future through the committer
(queue/commit.py, queue/commit_sync.py) and the session's fast path (receive/
session_fast.py): submitted -> taken in a batch (queue wait) -> the writer lock taken
(lock wait: the flock, SQLite's BEGIN IMMEDIATE) -> COMMIT returned (transaction) -> its
flush started -> flushed and settled -> the event loop running the reply (settle -> loop).
Each receive process writes its figures to a file every 500 messages; printed: mean, p50
and p90 of each stage in ms, and the batch size. Messages a lone session commits inline
(queue/inline.py) do not pass the committer and are not counted: use 2 sessions or more.
With --syscalls S, `strace -f -c` watches the first receive process for S seconds from
the second second on (give it --messages enough to last), and its counts are printed per
message that process queued meanwhile (strace slows it severalfold: counts, not times).
Anything the hook cannot find (the code changed) is left alone; the script then says it
found no figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flushshim import FlushShim
from mailgate_instance import (
    CONFIG,
    Mailgate,
    add_mailgate_options,
    hook_path,
    setting_arg,
    with_settings,
)
from measure import smtp_source

HOOK = """
import json, os, threading, time

def _install(out):
    from concurrent.futures import Future
    from mailgate.queue import commit, commit_sync, sqlite
    from mailgate.receive import session_fast
    now = time.perf_counter
    rows, lock, local = [], threading.Lock(), threading.local()

    submit = commit.Committer.submit
    def timed_submit(self, name, op):
        future = submit(self, name, op)
        future._bench = [now()]
        return future
    commit.Committer.submit = timed_submit

    apply = commit.Committer._apply
    def timed_apply(self, conn, batch):
        local.lock_wait, taken = 0.0, now()
        try:
            return apply(self, conn, batch)
        finally:
            done = now()
            for job in batch:
                marks = getattr(job.future, "_bench", None)
                if marks is not None:
                    marks += [taken, local.lock_wait, done, len(batch)]
    commit.Committer._apply = timed_apply

    begin = sqlite.SqliteConnection.begin
    def timed_begin(self):
        started = now()
        try:
            return begin(self)
        finally:
            local.lock_wait = getattr(local, "lock_wait", 0.0) + now() - started
    sqlite.SqliteConnection.begin = timed_begin

    flush = commit_sync.CommitSyncer._flush
    def timed_flush(self, batches, **kwargs):
        started = now()
        for results in batches:
            for future, _, _ in results:
                marks = getattr(future, "_bench", None)
                if marks is not None and len(marks) == 5:
                    marks.append(started)
        return flush(self, batches, **kwargs)
    commit_sync.CommitSyncer._flush = timed_flush

    settle = commit_sync.settle
    def timed_settle(results):
        settled = now()
        for future, _, _ in results:
            marks = getattr(future, "_bench", None)
            if marks is not None and len(marks) in (5, 6):
                if len(marks) == 5:
                    marks.append(marks[3])  # flushed in the writer's thread: no hand-off
                marks.append(settled)
        return settle(results)
    commit_sync.settle = timed_settle
    commit.settle = timed_settle

    committed = session_fast.FastPath._committed
    def timed_committed(self, future):
        marks = getattr(future, "_bench", None)
        if marks is not None and len(marks) == 7:
            t0, taken, lock_wait, done, size, flush_at, settled = marks
            row = (size, taken - t0, lock_wait, done - taken - lock_wait, flush_at - done,
                   settled - flush_at, now() - settled)
            with lock:
                rows.append(row)
                if len(rows) % 500 == 0:
                    with open(f"{out}.{os.getpid()}", "w") as f:
                        json.dump(rows, f)
        return committed(self, future)
    session_fast.FastPath._committed = timed_committed

if os.environ.get("MAILGATE_BENCH_STAGES"):
    try:
        _install(os.environ["MAILGATE_BENCH_STAGES"])
    except Exception:
        pass
"""

STAGES = ("queue wait", "lock wait", "transaction", "to flush start", "flush", "settle -> loop")


def _syscalls(mg: Mailgate, seconds: float, out: Path) -> None:
    time.sleep(2)
    pid = next(p for p, role in mg.pids().items() if role == "receive")
    cmd = ["timeout", "-s", "INT", str(seconds), "strace", "-f", "-c", "-o", str(out)]
    subprocess.run([*cmd, "-p", str(pid)], capture_output=True, timeout=seconds + 30)


def _print_syscalls(path: Path) -> None:
    if not path.exists():
        print("strace wrote nothing (is it installed?)")
        return
    counts = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if (
            len(parts) >= 5
            and parts[0][0].isdigit()
            and parts[-1].isidentifier()
            and parts[-1] != "total"
        ):
            counts[parts[-1]] = int(parts[3])
    # getrandom: one per queue id (model.new_queue_id), so one per message queued.
    messages = counts.get("getrandom", 0)
    if not messages:
        print(path.read_text())
        return
    print(f"system calls of one receive process, per message it queued ({messages} messages):")
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1])[:16]:
        print(f"  {name:14} {count / messages:7.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--messages", type=int, default=6000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument(
        "--set", action="append", default=[], type=setting_arg, help="'section: key = value'"
    )
    p.add_argument("--syscalls", type=float, default=0.0, help="seconds of strace -c")
    p.add_argument(
        "--flush-delay-us", type=int, default=0, help="run under the flush shim (flushshim.py)"
    )
    add_mailgate_options(p)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="commit-stages-"))
    config = with_settings(CONFIG, args.set)
    mg = Mailgate(root, args.python, src=args.src, config=config, commit_stats=False)
    mg.service_env = {
        "PYTHONPATH": hook_path(root, HOOK, args.src),
        "MAILGATE_BENCH_STAGES": str(root / "stages"),
    }
    if args.flush_delay_us:
        shim = FlushShim(root / "shim", args.flush_delay_us)
        mg.service_env.update(shim.environment(shim.counter("mailgate")))
    address = mg.add_mailboxes()[0]
    traced = root / "strace.txt"
    try:
        mg.start()
        mg.set_paused("postoffice", True)
        watcher = None
        if args.syscalls:
            watcher = threading.Thread(target=_syscalls, args=(mg, args.syscalls, traced))
            watcher.start()
        run = smtp_source(
            mg.port, sessions=args.sessions, messages=args.messages, length=args.size,
            sender="s@bench.test", recipient=address, timeout=600,
        )  # fmt: skip
        if watcher is not None:
            watcher.join()
        mg.stop()
        if run.error:
            print(run.error, file=sys.stderr)
        print(f"{args.messages} messages, {args.sessions} sessions: "
              f"{args.messages / run.seconds:.0f} msg/s")  # fmt: skip
        files = glob.glob(str(root / "stages.*"))
        rows = [row for f in files for row in json.loads(Path(f).read_text())]
        if not rows:
            print("no figures: the hook found nothing to time (or every commit was inline)")
        else:
            sizes = [row[0] for row in rows]
            print(f"{len(rows)} messages timed; batch mean {statistics.mean(sizes):.1f}")
            print(f"{'stage':16} {'mean':>8} {'p50':>8} {'p90':>8}  (ms)")
            for n, name in enumerate(STAGES, start=1):
                values = sorted(row[n] * 1e3 for row in rows)
                p50, p90 = values[len(values) // 2], values[int(len(values) * 0.9)]
                print(f"{name:16} {statistics.mean(values):8.3f} {p50:8.3f} {p90:8.3f}")
        if args.syscalls:
            _print_syscalls(traced)
    finally:
        if mg.alive():
            mg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
