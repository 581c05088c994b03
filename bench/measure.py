"""What the benchmarks measure, shared by bench/throughput.py and bench/vs_postfix.py.

CPU seconds of a process tree (utime+stime+cutime+cstime from /proc, so workers that exited
and were reaped still count), host CPU and a wait for an idle host, resident memory, Maildir
delivery counts, percentiles, Postfix's smtp-source as the load generator and smtp-sink as the
receiving end of a relay. Reads /proc only; every wait has a deadline; nothing here knows
mailgate or Postfix. Run directories are removed at the end, not between runs (see LEFTOVERS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_greeting(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
    """Poll 127.0.0.1:`port` until it sends a 220 greeting; the seconds it took."""
    started = time.monotonic()
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as s,
        ):
            if s.recv(512).startswith(b"220"):
                return time.monotonic() - started
        if not alive():
            raise BenchError(f"the server for port {port} exited before greeting")
        if time.monotonic() - started > timeout:
            raise BenchError(f"no SMTP greeting on port {port} in {timeout}s")
        time.sleep(0.02)


# --- CPU and memory ------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. reaped children) of every process, from /proc.

    /proc/PID/stat counts in clock ticks, truncated: a process that used 9 ms shows 0, which
    over Postfix's hundred short-lived daemons undercounts by about half a tick each. So a
    live process's own time is the larger of that and the sum of its live threads' exact
    schedstat times (which leave out threads that exited, counted in stat); reaped children's
    time (cutime + cstime, summed exactly by the kernel before the one truncation) is added.
    """
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        children = (int(fields[13]) + int(fields[14])) / CLK_TCK
        table[int(entry)] = (int(fields[1]), max(own, threads_seconds(entry)) + children)
    return table


def threads_seconds(pid: str) -> float:
    """Exact CPU seconds of the live threads of a process (schedstat: nanoseconds)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def descendants(pid: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    table = process_table() if table is None else table
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, (up, _) in table.items() if up == current]
        found.extend(children)
        todo.extend(children)
    return found


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of a process and all its descendants (mailgate's master and workers,
    Postfix's master and its daemons); 0 for None."""
    if pid is None:
        return 0.0
    table = process_table()
    return sum(table[p][1] for p in [pid, *descendants(pid, table)] if p in table)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def user_sys_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already counted in user
    return total - idle, total


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def other_cpu(before: tuple[int, int], after: tuple[int, int], measured: float) -> float:
    """About how much CPU the rest of the machine used between two host samples, beyond
    `measured` (server and client): tick-accounted, good to a few tenths of a second."""
    return max(0.0, (after[0] - before[0]) / CLK_TCK - measured)


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to `timeout`) for a second in which the host is at most `max_busy` busy.

    Client and server share a small machine; another job's CPU use would be counted against
    the service. Returns the busy fraction of the last second looked at.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = host_cpu_jiffies()
        time.sleep(1.0)
        busy = busy_fraction(before, host_cpu_jiffies())
        if busy <= max_busy or time.monotonic() > deadline:
            return busy


# --- results -------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def count_files(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            total += len(os.listdir(d))
    return total


def wait_delivered(
    dirs: list[Path], expected: int, timeout: float, alive: Callable[[], bool]
) -> tuple[int, float]:
    """Poll the new/ directories until they hold `expected` files (or the deadline passes).

    Returns the count and the wall time of the last link into a new/ directory (its mtime).
    """
    deadline = time.monotonic() + timeout
    while True:
        count = count_files(dirs)
        if count >= expected or time.monotonic() > deadline or not alive():
            break
        time.sleep(0.05)
    stamps = [d.stat().st_mtime_ns for d in dirs if d.exists()]
    return count, (max(stamps) / 1e9 if stamps else time.time())


# --- the load: smtp-source -----------------------------------------------------------------------


@dataclass
class SourceRun:
    seconds: float  # from starting smtp-source to its exit
    client_cpu: float
    error: str | None


def smtp_source(
    port: int,
    *,
    sessions: int,
    messages: int,
    length: int,
    sender: str,
    recipient: str,
    timeout: float,
    path: str = SMTP_SOURCE,
) -> SourceRun:
    """Postfix's smtp-source against 127.0.0.1:`port`: `sessions` persistent sessions (-d)
    sending `messages` messages of `length` body bytes (-l) to one recipient."""
    command = [
        path,
        "-d",
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(length),
        "-M", "bench.client",
        "-f", sender,
        "-t", recipient,
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    client_before = user_sys_cpu(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    error = None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            error = f"smtp-source exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired:
        error = f"smtp-source did not finish in {timeout}s"
    seconds = time.monotonic() - started
    return SourceRun(seconds, user_sys_cpu(resource.RUSAGE_CHILDREN) - client_before, error)


# --- the receiving end of a relay: smtp-sink ---------------------------------------------------


class SmtpSink:
    """Postfix's smtp-sink: a C SMTP server that accepts and discards mail (the smarthost).

    Run with -c, it prints `sess=N quit=N mesg=N` after each message; a thread reads that, so
    `received` and `last_received` (wall time) say how many arrived and when the last did.
    """

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, path: str = SMTP_SINK) -> None:
        self.port = free_port()
        self.received = 0
        self.last_received = 0.0
        command = [path, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, name="smtp-sink-counter", daemon=True)
        self._reader.start()
        try:
            wait_greeting(self.port, 10, lambda: self.proc.poll() is None)
        except BenchError:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        tail = b""
        while chunk := self.proc.stdout.read1(65536):
            tail = (tail + chunk)[-64:]
            found = self._MESG.findall(tail)
            if found and int(found[-1]) != self.received:
                self.received, self.last_received = int(found[-1]), time.time()

    def wait_received(self, expected: int, timeout: float) -> tuple[int, float]:
        """Poll until `expected` messages arrived (or the deadline); (count, last arrival)."""
        deadline = time.monotonic() + timeout
        while self.received < expected and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        return self.received, self.last_received or time.time()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


# --- run directories -----------------------------------------------------------------------------

# Run directories are removed after the last run, not between runs: on an ext4 without a
# journal (this VM's root), creating a file skips every inode freed in the last 5 s (300 s while
# its inode-table block is dirty), one buffer lookup each, so thousands of files deleted just
# before a run made the next run's Maildir deliveries spend most of their time in the kernel.
LEFTOVERS: list[Path] = []


def new_run_dir(prefix: str, parent: str | None, keep: bool) -> Path:
    """A fresh run directory, removed by remove_leftovers() unless `keep`."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if keep:
        print(f"  keeping {root}", flush=True)
    else:
        LEFTOVERS.append(root)
    return root


def remove_leftovers() -> None:
    for root in LEFTOVERS:
        shutil.rmtree(root, ignore_errors=True)
    LEFTOVERS.clear()
    os.sync()  # written-back inode blocks count as freed 5 s ago at most, not 300 s


def journal_note(path: str) -> str | None:
    """A warning when `path` lies on an ext4 filesystem without a journal (see LEFTOVERS)."""
    try:
        device = os.stat(path).st_dev
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            major, minor = (int(x) for x in fields[2].split(":"))
            fstype = fields[fields.index("-") + 1]
            if os.makedev(major, minor) == device and fstype == "ext4":
                source = Path(fields[fields.index("-") + 2]).name
                task = Path(f"/sys/fs/ext4/{source}/journal_task")
                if task.exists() and task.read_text().strip() == "<none>":
                    return (
                        f"note: {path} is on ext4 without a journal: new files skip recently "
                        "freed inodes, so deleting many files just before a run slows delivery"
                    )
    except (OSError, ValueError):
        pass
    return None


def command_text(script: str, argv: list[str]) -> str:
    """The command line that reproduces a run, as docs/performance.md quotes it."""
    return shlex.join([".venv/bin/python", f"bench/{script}", *argv])


def git_describe() -> str:
    """The commit of the repository the bench runs from (`-dirty` with uncommitted changes)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return out.stdout.strip() or "?"
    return "?"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options every bench takes: the tools' paths, run directories, deadlines, the quiet wait.
    Call `run_option_defaults` on the parsed arguments."""
    p.add_argument("--postfix", default=POSTFIX, help="postfix(1) path")
    p.add_argument("--smtp-source", default=SMTP_SOURCE, help="smtp-source path")
    p.add_argument("--smtp-sink", default=SMTP_SINK, help="smtp-sink path")
    p.add_argument("--tmp-dir", default=None, help="parent of the run directories")
    p.add_argument("--timeout", type=float, default=None, help="deadline of the sending phase")
    p.add_argument("--deliver-timeout", type=float, default=None, help="deadline of delivery")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM to SIGKILL")
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=120.0,
        help="before each run wait up to this long for the host to be idle (0: don't)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directories (debugging)")


def run_option_defaults(args: argparse.Namespace) -> None:
    """Deadlines that grow with the number of messages, unless given."""
    if args.timeout is None:
        args.timeout = 120.0 + args.messages / 10
    if args.deliver_timeout is None:
        args.deliver_timeout = 60.0 + args.messages / 50
