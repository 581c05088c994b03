"""Throughput benchmark: N concurrent SMTP sessions against a real `mailgate run` over loopback.

    .venv/bin/python bench/throughput.py [--sessions 10] [--messages 5000] [--size 5120]
                                         [--client asyncio|smtp-source] [--runs 1]

Each run starts a fresh `mailgate run` subprocess on a new temporary data directory and a
free 127.0.0.1 port, creates mailboxes MS:BENCH/PO/U1..U4, sends `--messages` messages of
`--size` bytes over `--sessions` persistent SMTP sessions, waits (with a deadline) until the
Maildir new/ directories hold every accepted message, stops mailgate (SIGTERM, SIGKILL after a
deadline); the data directories are removed after the last run. Durability is the service's
own: every 250 after DATA comes after a fsync'd SQLite commit (group commit).

Measured per run:

- accept_msgs_per_s: messages answered 250 after DATA / wall time from the first connect to the
  last 250 (smtp-source: from starting it to its exit).
- deliver_msgs_per_s: delivered messages / wall time from the first 250 to the moment the last
  message was linked into a new/ directory (the newest mtime of the new/ directories, read once
  they hold every accepted message). Delivery runs concurrently with acceptance, so this is
  bounded by the accept rate.
- p50/p99 DATA-to-250 latency (asyncio client only): from writing the final "." to reading the
  reply.
- mailgate CPU seconds (utime+stime from /proc/PID/stat, summed over the process and any
  worker processes below it) from just before the load starts to the end of delivery, the
  bench client's own CPU seconds, and host CPU use in that window.
- run directories are removed after the last run (see LEFTOVERS for why not in between).
- commit batches: mailgate runs as `python -m mailgate run` with a sitecustomize.py (HOOK below)
  first on its PYTHONPATH, so it and any worker processes write the group committer's
  statistics() and how many operations of each kind it committed when the commit thread ends;
  --no-commit-stats leaves the hook out.
- other processes: CPU the rest of the machine used meanwhile (tick-accounted, approximate).
  Each run first waits (--quiet-timeout) for an idle host; a non-zero other_cpu_s in the
  summary means someone else's job competed for the 2 CPUs and the figures are low.

Options worth knowing:

- --client smtp-source: Postfix's smtp-source (-d, persistent sessions, no PIPELINING, one
  recipient, all messages to U1) instead of the asyncio client.
- --no-pipelining: the asyncio client sends MAIL, RCPT and DATA one at a time.
- --experiment-nodelay: the hook sets TCP_NODELAY on mailgate's accepted sockets. mailgate's
  listening socket is created with protocol 0, so asyncio does not set TCP_NODELAY on the
  sessions; with PIPELINING the replies to MAIL and RCPT then wait for the client's delayed
  ACK (~40 ms per message). This flag measures what setting it would change.
- --compare-postfix: after each mailgate run, the same smtp-source load against a private
  Postfix instance (`postfix -c TMPDIR/etc`, own queue, own loopback port, virtual(8) delivery
  into a Maildir as `nobody`); the system's Postfix and /etc/postfix are not touched. Needs root.
- --src DIR: run mailgate from another src/ directory (e.g. a `git archive HEAD src` snapshot
  while the working tree is being edited).

The last line of each run is one stable, greppable summary:

    accept_msgs_per_s=1234.5 deliver_msgs_per_s=987.6 sessions=10 size=5120 messages=5000 ...

The asyncio client speaks SMTP directly over asyncio streams and uses PIPELINING (advertised
by mailgate): MAIL, RCPT and DATA go in one write, and the next message's MAIL/RCPT/DATA ride
in the same write as the previous message's final ".". Client and server share the machine's
CPUs, so the client is kept lean: one read per reply line, one write per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAILBOXES = ("U1", "U2", "U3", "U4")
NET, PO = "BENCH", "PO"
SENDER = "sender@bench.test"
CONFIG = """\
[service]
hostname = "bench.test"
stop_timeout = "10s"

[postoffice]
domain = "bench.test"

[log]
stderr = false
max_bytes = "1GiB"  # no rotation during a run: smtp-source runs count events 3000

[admin]
listen = ""
"""
# Header bytes smtp-source adds on top of its -l payload (From, To, Date, Message-Id and the
# blank line; measured with Postfix 3.7's smtp-source), so both clients send about --size bytes.
SMTP_SOURCE_HEADER_BYTES = 150
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Written as sitecustomize.py into a directory put first on mailgate's PYTHONPATH, so that
# `python -m mailgate run` and every worker process it starts (they inherit the environment)
# import it at start-up. It wraps the group committer so that its statistics and how many
# operations of each kind it committed go to $MAILGATE_BENCH_STATS.<pid> when the commit thread
# ends (a clean stop), and with --experiment-nodelay sets TCP_NODELAY on accepted SMTP sockets.
# Anything it cannot find (the code is being changed) is left alone.
HOOK = """
import os

def _install():
    import collections, json
    try:
        from mailgate.queue import commit
    except Exception:
        return
    path = os.environ["MAILGATE_BENCH_STATS"] + "." + str(os.getpid())
    kinds = collections.Counter()
    with_enqueue = [0]
    committer = getattr(commit, "Committer", None)
    original_run = getattr(committer, "run", None)
    original_apply = getattr(committer, "_apply", None)

    def run(self, *args, **kwargs):
        try:
            return original_run(self, *args, **kwargs)
        finally:
            try:
                s = self.statistics()
                report = {"batches": s.batches, "operations": s.operations,
                          "largest_batch": s.largest_batch, "kinds": dict(kinds),
                          "batches_with_enqueue": with_enqueue[0]}
                with open(path, "w") as f:
                    json.dump(report, f)
            except Exception:
                pass

    def apply(self, *args, **kwargs):
        ok = original_apply(self, *args, **kwargs)
        try:
            names = [job.name for job in (args[1] if len(args) > 1 else kwargs["batch"])]
            if ok:
                kinds.update(names)
                with_enqueue[0] += "enqueue" in names
        except Exception:
            pass
        return ok

    if original_run is not None:
        committer.run = run
    if original_apply is not None:
        committer._apply = apply

def _nodelay():
    import socket
    try:
        from mailgate.receive import smtp
        original_made = smtp.MailgateSMTP.connection_made
    except Exception:
        return

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return original_made(self, transport)

    smtp.MailgateSMTP.connection_made = connection_made

if os.environ.get("MAILGATE_BENCH_STATS"):
    _install()
if os.environ.get("MAILGATE_BENCH_NODELAY") == "1":
    _nodelay()
"""


class BenchError(Exception):
    pass


# --- the mailgate process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def mailgate_env(src: str | None) -> dict[str, str]:
    """The environment of mailgate processes; `src` (a src/ directory) goes first on the path."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(src).resolve()), env.get("PYTHONPATH")) if p
        )
    return env


def mailgate_origin(python: str, src: str | None) -> str:
    """Where the mailgate package that will run comes from."""
    result = subprocess.run(
        [python, "-c", "import mailgate; print(mailgate.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=mailgate_env(src),
    )
    if result.returncode != 0:
        raise BenchError(f"{python} cannot import mailgate: {result.stderr.strip()[-300:]}")
    return str(Path(result.stdout.strip()).parent)


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. reaped children) of every process, from /proc."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
        # utime + stime + cutime + cstime: a worker that exited and was waited for still counts
        table[int(entry)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / CLK_TCK)
    return table


def descendants(pid: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    table = process_table() if table is None else table
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, (up, _) in table.items() if up == current]
        found.extend(children)
        todo.extend(children)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (mailgate may run as a master with
    worker processes; Postfix is a master with many)."""
    table = process_table()
    return sum(table[p][1] for p in [pid, *descendants(pid, table)] if p in table)


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already counted in user
    return total - idle, total


class Mailgate:
    """One `mailgate run` subprocess on its own temporary data directory."""

    def __init__(
        self, root: Path, python: str, *, commit_stats: bool, nodelay: bool, src: str | None
    ) -> None:
        self.root = root
        self.python = python
        self.env = mailgate_env(src)
        self.data_dir = root / "var"
        self.config = root / "mailgate.toml"
        self.config.write_text(CONFIG)
        self.stats_path = root / "commit-stats.json"
        self.hook_dir = root / "hook"
        self.stderr_path = root / "stderr.log"
        self.commit_stats = commit_stats
        self.nodelay = nodelay
        self.port = 0
        self.smarthost = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        where = ("--config", str(self.config), "--data-dir", str(self.data_dir))
        result = subprocess.run(
            [self.python, "-m", "mailgate", *args, *where],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.env,
        )
        if result.returncode != 0:
            raise BenchError(f"mailgate {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def add_mailboxes(self) -> list[str]:
        return [self.cli("mailbox", "add", f"MS:{NET}/{PO}/{mbx}") for mbx in MAILBOXES]

    def new_dirs(self) -> list[Path]:
        return [self.data_dir / "postoffice" / NET / PO / mbx / "new" for mbx in MAILBOXES]

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        env = dict(self.env)
        if self.commit_stats or self.nodelay:
            self.hook_dir.mkdir(exist_ok=True)
            (self.hook_dir / "sitecustomize.py").write_text(HOOK)
            path = [str(self.hook_dir), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
            env["MAILGATE_BENCH_STATS"] = str(self.stats_path) if self.commit_stats else ""
            env["MAILGATE_BENCH_NODELAY"] = "1" if self.nodelay else "0"
        args = [
            "run", "--config", str(self.config), "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            *(["--smarthost", self.smarthost] if self.smarthost else []),
        ]  # fmt: skip
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [self.python, "-m", "mailgate", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"mailgate exited with {self.proc.returncode}: {self.stderr()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(512).startswith(b"220"):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"mailgate did not answer on port {self.port} in {timeout}s")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit status (None if it had to be killed)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            workers = descendants(proc.pid)  # worker processes, if mailgate runs any
            proc.kill()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            return None

    def stderr(self) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return text[-2000:]

    def read_commit_stats(self) -> dict[str, Any] | None:
        """The committer statistics of every process that had one, added up."""
        found: dict[str, Any] = {}
        kinds: dict[str, int] = {}
        for path in sorted(self.root.glob(self.stats_path.name + ".*")):
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key in ("batches", "operations", "batches_with_enqueue"):
                found[key] = found.get(key, 0) + int(stats.get(key, 0))
            found["largest_batch"] = max(found.get("largest_batch", 0), stats["largest_batch"])
            for kind, count in stats.get("kinds", {}).items():
                kinds[kind] = kinds.get(kind, 0) + count
            found["processes"] = found.get("processes", 0) + 1
        if found:
            found["kinds"] = kinds
        return found or None

    def received_events(self) -> tuple[int, float | None]:
        """Count of MessageReceived (3000) events and the time of the first one."""
        count, first = 0, None
        for path in sorted((self.data_dir / "log").glob("events.jsonl*")):
            with open(path, "rb") as f:
                for line in f:
                    if b'"id": 3000,' not in line:
                        continue
                    count += 1
                    if first is None:
                        with contextlib.suppress(ValueError, KeyError):
                            first = float(json.loads(line)["ts"])
        return count, first


# --- a private Postfix instance (--compare-postfix) ----------------------------------------------

POSTFIX_DOMAIN = "po.bench.bench.test"
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:u1/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
"""
# Only the services this needs, none chrooted, SMTP on a loopback port of our own.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A Postfix instance of its own (`postfix -c DIR`): own queue, own port, Maildir delivery.

    Nothing of the system's Postfix (/etc/postfix, port 25, its queue) is touched. Needs root
    (postfix(1) is reserved for the superuser); mail is delivered by virtual(8) as `nobody`.
    """

    def __init__(self, root: Path, postfix: str) -> None:
        import grp
        import pwd

        self.root = root
        self.postfix = postfix
        self.etc = root / "etc"
        self.new_dir = root / "mail" / "u1" / "new"
        self.port = 0
        self.started = False
        self.nobody = pwd.getpwnam("nobody")
        self.postfix_user = pwd.getpwnam("postfix")
        self.nogroup = grp.getgrgid(self.nobody.pw_gid)

    def command(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.postfix, "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise BenchError("--compare-postfix needs root (postfix(1) is for the superuser)")
        self.root.chmod(0o755)  # virtual(8) delivers as nobody below it
        for sub in ("etc", "spool", "data", "mail"):
            (self.root / sub).mkdir()
        os.chown(self.root / "data", self.postfix_user.pw_uid, -1)
        os.chown(self.root / "mail", self.nobody.pw_uid, self.nobody.pw_gid)
        self.port = free_port()
        values = {
            "root": self.root,
            "domain": POSTFIX_DOMAIN,
            "uid": self.nobody.pw_uid,
            "gid": self.nobody.pw_gid,
            "port": self.port,
        }
        (self.etc / "main.cf").write_text(POSTFIX_MAIN_CF.format(**values))
        (self.etc / "master.cf").write_text(POSTFIX_MASTER_CF.format(**values))
        started = self.command("start")
        self.started = True
        if started.returncode != 0:
            raise BenchError(f"postfix start failed: {started.stderr} {self.maillog()[-800:]}")
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(512).startswith(b"220"):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"postfix did not answer in {timeout}s: {self.maillog()[-800:]}")
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "spool" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.master_pid()
        return pid is not None and Path(f"/proc/{pid}").exists()

    def cpu_seconds(self) -> float:
        """CPU of the master and every process below it (see tree_cpu_seconds)."""
        master = self.master_pid()
        return 0.0 if master is None else tree_cpu_seconds(master)

    def accepted(self) -> int:
        """Messages that cleanup(8) took in (one `message-id=` line each)."""
        return sum(
            1
            for line in self.maillog().splitlines()
            if "/cleanup[" in line and "message-id=" in line
        )

    def stop(self, timeout: float) -> str | None:
        """`postfix stop`, then `postfix abort`, then SIGKILL of the master; a problem or None."""
        if not self.started:
            return None
        master = self.master_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.command("stop", timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.alive():
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.command("abort", timeout=timeout)
        time.sleep(1)
        if master is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGKILL)
            return f"postfix master {master} had to be killed"
        return None


# --- the asyncio SMTP client ------------------------------------------------------------------


@dataclass
class ClientResult:
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_connect: float = 0.0  # monotonic
    first_250: float = 0.0  # monotonic
    first_250_wall: float = 0.0  # time.time()
    last_250: float = 0.0  # monotonic
    progress: int = 0  # replies read, for the stall watchdog


def message_header(number: int, recipient: str) -> bytes:
    """Headers of message `number`; the same length for every number below 10**8."""
    return (
        f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: bench {number:08d}\r\n"
        f"Message-ID: <bench.{number:08d}@bench.test>\r\n\r\n"
    ).encode()


def message_filler(header_length: int, size: int) -> bytes:
    """Body lines (76 characters, CRLF) that bring a message to about `size` bytes."""
    line = b"x" * 76 + b"\r\n"
    lines, rest = divmod(max(size - header_length, 3), len(line))
    return line * lines + (b"y" * max(rest - 2, 1) + b"\r\n" if rest else b"")


async def read_reply(reader: asyncio.StreamReader, result: ClientResult) -> bytes:
    """One (possibly multi-line) reply; returns its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by mailgate")
        if line[3:4] != b"-":
            result.progress += 1
            return line


async def session(
    port: int,
    recipients: list[str],
    size: int,
    numbers: Iterator[int],
    result: ClientResult,
    pipelining: bool,
) -> None:
    if not result.first_connect:
        result.first_connect = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await read_reply(reader, result)
        if not greeting.startswith(b"220"):
            raise ConnectionError(f"greeting {greeting!r}")
        writer.write(b"EHLO bench.client\r\n")
        if not (await read_reply(reader, result)).startswith(b"250"):
            raise ConnectionError("EHLO refused")
        fillers: dict[str, bytes] = {}

        def envelope(number: int) -> bytes:
            rcpt = recipients[number % len(recipients)]
            return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()

        def message(number: int) -> bytes:
            rcpt = recipients[number % len(recipients)]
            header = message_header(number, rcpt)
            filler = fillers.get(rcpt)
            if filler is None:
                filler = fillers[rcpt] = message_filler(len(header), size)
            return header + filler

        number = next(numbers, None)
        written = False  # whether the envelope of `number` went out with the previous "."
        while number is not None:
            if pipelining:
                if not written:
                    writer.write(envelope(number))
                replies = [await read_reply(reader, result) for _ in range(3)]
            else:
                replies = []
                for command in envelope(number).splitlines(keepends=True):
                    writer.write(command)
                    replies.append(await read_reply(reader, result))
            following = next(numbers, None)
            if not replies[2].startswith(b"354"):
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"MAIL/RCPT/DATA answered {replies!r}")
                number, written = following, False
                continue
            payload = message(number) + b".\r\n"
            written = False
            if pipelining and following is not None:
                payload += envelope(following)
                written = True
            sent = time.monotonic()
            writer.write(payload)
            reply = await read_reply(reader, result)
            now = time.monotonic()
            if reply.startswith(b"250"):
                result.accepted += 1
                result.latencies.append(now - sent)
                if not result.first_250:
                    result.first_250, result.first_250_wall = now, time.time()
                result.last_250 = now
            else:
                result.refused += 1
                if len(result.errors) < 5:
                    result.errors.append(f"after DATA: {reply!r}")
            number = following
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(ConnectionError):
            await read_reply(reader, result)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def drive(
    port: int,
    recipients: list[str],
    sessions: int,
    messages: int,
    size: int,
    deadline: float,
    stall: float,
    pipelining: bool,
) -> ClientResult:
    """Run every session to completion; give up at `deadline` or after `stall` idle seconds."""
    result = ClientResult()
    numbers = iter(range(messages))  # shared: each session takes the next message number
    tasks = [
        asyncio.create_task(session(port, recipients, size, numbers, result, pipelining))
        for _ in range(sessions)
    ]
    last_progress, last_change = -1, time.monotonic()
    pending: set[asyncio.Task[None]] = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        now = time.monotonic()
        if result.progress != last_progress:
            last_progress, last_change = result.progress, now
        reason = None
        if now > deadline:
            reason = "run deadline passed"
        elif now - last_change > stall:
            reason = f"no SMTP reply for {stall:.0f}s"
        if reason:
            result.errors.append(reason)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=10)
            break
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled()]
    result.errors.extend(f"session failed: {exc!r}" for exc in failures[:10] if exc)
    return result


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    server: str
    client: str
    sessions: int
    size: int
    messages: int
    pipelining: bool
    nodelay: bool
    accepted: int = 0
    refused: int = 0
    delivered: int = 0
    accept_seconds: float = 0.0
    deliver_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    host_busy: float = 0.0
    other_cpu: float = 0.0
    commit: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def count_delivered(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            total += len(os.listdir(d))
    return total


def wait_delivered(
    dirs: list[Path], expected: int, timeout: float, alive: Callable[[], bool]
) -> tuple[int, float]:
    """Poll the new/ directories until they hold `expected` files (or the deadline passes).

    Returns the count and the wall time of the last link into a new/ directory.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = count_delivered(dirs)
        if count >= expected or time.monotonic() > deadline or not alive():
            break
        time.sleep(0.05)
    last_link = max(d.stat().st_mtime_ns for d in dirs if d.exists()) / 1e9
    return count, last_link


def relayed_count(data_dir: Path) -> int:
    """Recipients the smarthost connector delivered, from the service's control socket."""
    path = data_dir / "run" / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b'{"command": "status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    queues = json.loads(data)["result"]["queues"]
    return int(queues.get("smarthost", {}).get("delivered", 0))


def wait_relayed(
    data_dir: Path, expected: int, timeout: float, alive: Callable[[], bool]
) -> tuple[int, float]:
    """Poll until the smarthost connector delivered `expected` recipients; (count, when)."""
    deadline = time.monotonic() + timeout
    count = 0
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            count = relayed_count(data_dir)
        if count >= expected or time.monotonic() > deadline or not alive():
            return count, time.time()
        time.sleep(0.05)


class SmtpSink:
    """Postfix's smtp-sink: a C SMTP server that accepts and discards mail (the smarthost)."""

    def __init__(self, path: str) -> None:
        self.port = free_port()
        command = [path, "-u", "nobody", f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(512).startswith(b"220"):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"smtp-sink did not start (exit {self.proc.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def user_sys_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def smtp_source(args: argparse.Namespace, port: int, recipient: str, m: Measurement) -> None:
    """Run smtp-source against 127.0.0.1:`port`; sets accept_seconds and client_cpu of `m`."""
    client_before = user_sys_cpu(resource.RUSAGE_CHILDREN)
    command = [
        args.smtp_source,
        "-d",  # one persistent session per -s, like the asyncio client
        "-s", str(args.sessions),
        "-m", str(args.messages),
        "-l", str(max(1, args.size - SMTP_SOURCE_HEADER_BYTES)),
        "-M", "bench.client",
        "-f", SENDER,
        "-t", recipient,
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, check=False
        )
        if done.returncode != 0:
            m.errors.append(f"smtp-source exit {done.returncode}: {done.stderr.strip()[-500:]}")
    except subprocess.TimeoutExpired:
        m.errors.append(f"smtp-source did not finish in {args.timeout}s")
    m.accept_seconds = time.monotonic() - started
    m.client_cpu = user_sys_cpu(resource.RUSAGE_CHILDREN) - client_before


def new_measurement(args: argparse.Namespace, server: str, client: str) -> Measurement:
    return Measurement(
        server,
        client,
        args.sessions,
        args.size,
        args.messages,
        pipelining=client == "asyncio" and args.pipelining,
        nodelay=server == "mailgate" and args.experiment_nodelay,
    )


def run_mailgate(args: argparse.Namespace) -> Measurement:
    m = new_measurement(args, "mailgate-relay" if args.relay else "mailgate", args.client)
    root = Path(tempfile.mkdtemp(prefix="mailgate-bench-", dir=args.tmp_dir))
    mg = Mailgate(
        root,
        args.python,
        commit_stats=args.commit_stats,
        nodelay=args.experiment_nodelay,
        src=args.src,
    )
    sink: SmtpSink | None = None
    config = CONFIG
    if args.postoffice_threads:
        config = config.replace(
            "[postoffice]\n", f"[postoffice]\nthreads = {args.postoffice_threads}\n", 1
        )
    if args.receive:
        config += f"\n[processes]\nreceive = {args.receive}\n"
    mg.config.write_text(config)
    try:
        recipients = mg.add_mailboxes()
        if args.relay:
            sink = SmtpSink(args.smtp_sink)
            mg.smarthost = f"127.0.0.1:{sink.port}"
            recipients = [f"r{n}@relay.example" for n in range(len(recipients))]
        mg.start()
        cpu_before = mg.cpu_seconds()
        host_before = host_cpu_jiffies()
        deadline = time.monotonic() + args.timeout
        if args.client == "asyncio":
            client_before = user_sys_cpu(resource.RUSAGE_SELF)
            result = asyncio.run(
                drive(
                    mg.port,
                    recipients,
                    args.sessions,
                    args.messages,
                    args.size,
                    deadline,
                    args.stall_timeout,
                    args.pipelining,
                )
            )
            m.client_cpu = user_sys_cpu(resource.RUSAGE_SELF) - client_before
            m.accepted, m.refused, m.errors = result.accepted, result.refused, result.errors
            m.latencies = result.latencies
            m.accept_seconds = result.last_250 - result.first_connect if result.accepted else 0.0
            first_250_wall = result.first_250_wall
        else:
            smtp_source(args, mg.port, recipients[0], m)
            # Who got a 250 is what mailgate logged as received (event 3000).
            m.accepted, first = mg.received_events()
            m.refused = args.messages - m.accepted
            first_250_wall = first or 0.0
        host_accept = host_cpu_jiffies()
        m.other_cpu = other_cpu(host_before, host_accept, mg.cpu_seconds() - cpu_before, m)
        if m.accepted:
            alive = lambda: mg.proc is not None and mg.proc.poll() is None  # noqa: E731
            if args.relay:
                m.delivered, last_link = wait_relayed(
                    mg.data_dir, m.accepted, args.deliver_timeout, alive
                )
            else:
                m.delivered, last_link = wait_delivered(
                    mg.new_dirs(), m.accepted, args.deliver_timeout, alive
                )
            m.deliver_seconds = max(last_link - first_250_wall, 1e-9)
            if m.delivered < m.accepted:
                m.errors.append(f"only {m.delivered} of {m.accepted} delivered before the deadline")
        m.server_cpu = mg.cpu_seconds() - cpu_before
        m.host_busy = busy_fraction(host_before, host_accept)
    finally:
        status = mg.stop(args.stop_timeout)
        if status not in (0, None) or (status is None and mg.proc is not None):
            m.errors.append(f"mailgate stop: exit status {status}; stderr: {mg.stderr()[-300:]}")
        m.commit = mg.read_commit_stats()
        if sink is not None:
            sink.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            LEFTOVERS.append(root)
    return m


def other_cpu(
    before: tuple[int, int], after: tuple[int, int], server: float, m: Measurement
) -> float:
    """About how much CPU the rest of the machine used during the load (tick-accounted:
    a sanity check that nothing else competed, good to a few tenths of a second)."""
    return max(0.0, (after[0] - before[0]) / CLK_TCK - server - m.client_cpu)


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


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def run_postfix(args: argparse.Namespace) -> Measurement:
    """The same smtp-source load against a private Postfix instance delivering to a Maildir."""
    m = new_measurement(args, "postfix", "smtp-source")
    root = Path(tempfile.mkdtemp(prefix="postfix-bench-", dir=args.tmp_dir))
    pf = Postfix(root, args.postfix)
    try:
        pf.start()
        cpu_before = pf.cpu_seconds()
        host_before = host_cpu_jiffies()
        started_wall = time.time()
        smtp_source(args, pf.port, f"u1@{POSTFIX_DOMAIN}", m)
        host_accept = host_cpu_jiffies()
        m.other_cpu = other_cpu(host_before, host_accept, pf.cpu_seconds() - cpu_before, m)
        m.accepted = args.messages if not m.errors else pf.accepted()
        m.refused = args.messages - m.accepted
        if m.accepted:
            m.delivered, last_link = wait_delivered(
                [pf.new_dir], m.accepted, args.deliver_timeout, pf.alive
            )
            m.deliver_seconds = max(last_link - started_wall, 1e-9)
            if m.delivered < m.accepted:
                m.errors.append(f"only {m.delivered} of {m.accepted} delivered before the deadline")
        m.server_cpu = pf.cpu_seconds() - cpu_before
        m.host_busy = busy_fraction(host_before, host_accept)
    finally:
        problem = pf.stop(args.stop_timeout)
        if problem:
            m.errors.append(problem)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            LEFTOVERS.append(root)
    return m


# Run directories are removed after the last run, not between runs: on an ext4 without a
# journal (this VM's root), creating a file skips every inode freed in the last 5 s (300 s while
# its inode-table block is dirty), one buffer lookup each, so thousands of files deleted just
# before a run made the next run's Maildir deliveries spend most of their time in the kernel.
LEFTOVERS: list[Path] = []


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


def report(m: Measurement) -> str:
    accept_rate = m.accepted / m.accept_seconds if m.accept_seconds > 0 else 0.0
    deliver_rate = m.delivered / m.deliver_seconds if m.deliver_seconds > 0 else 0.0
    since = "the first 250" if m.server.startswith("mailgate") else "the start of smtp-source"
    print(
        f"  {m.server}: accepted {m.accepted}/{m.messages} in {m.accept_seconds:.3f}s "
        f"(refused {m.refused}); delivered {m.delivered} in {m.deliver_seconds:.3f}s "
        f"from {since}"
    )
    if m.latencies:
        print(
            "  DATA-to-250 latency ms: "
            f"p50={percentile(m.latencies, 50) * 1000:.2f} "
            f"p90={percentile(m.latencies, 90) * 1000:.2f} "
            f"p99={percentile(m.latencies, 99) * 1000:.2f} "
            f"max={max(m.latencies) * 1000:.2f}"
        )
    per_msg = m.server_cpu / m.accepted * 1000 if m.accepted else 0.0
    print(
        f"  CPU: {m.server} {m.server_cpu:.2f}s ({per_msg:.2f} ms/msg), "
        f"client {m.client_cpu:.2f}s, host busy {m.host_busy * 100:.0f}% of "
        f"{os.cpu_count()} CPUs during the accept phase (other processes ~{m.other_cpu:.1f}s)"
    )
    commit = m.commit or {}
    if commit:
        kinds = commit.get("kinds") or {}
        print(
            f"  commits: {commit.get('batches')} batches, {commit.get('operations')} operations, "
            f"largest {commit.get('largest_batch')}, "
            f"{commit.get('batches_with_enqueue')} batches held enqueues; by kind {kinds}; "
            f"from {commit.get('processes')} process(es)"
        )
    for error in m.errors:
        print(f"  error: {error}")
    fields = {
        "accept_msgs_per_s": f"{accept_rate:.1f}",
        "deliver_msgs_per_s": f"{deliver_rate:.1f}",
        "sessions": m.sessions,
        "size": m.size,
        "messages": m.messages,
        "client": m.client,
        "server": m.server,
        "pipelining": "yes" if m.pipelining else "no",
        "nodelay_experiment": "yes" if m.nodelay else "no",
        "accepted": m.accepted,
        "refused": m.refused,
        "delivered": m.delivered,
        "p50_ms": f"{percentile(m.latencies, 50) * 1000:.2f}" if m.latencies else "-",
        "p99_ms": f"{percentile(m.latencies, 99) * 1000:.2f}" if m.latencies else "-",
        "server_cpu_s": f"{m.server_cpu:.2f}",
        "client_cpu_s": f"{m.client_cpu:.2f}",
        "other_cpu_s": f"{m.other_cpu:.1f}",
        "commit_batches": commit.get("batches", "-"),
        "errors": len(m.errors),
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    p.add_argument("--messages", type=int, default=5000, help="messages in total")
    p.add_argument("--size", type=int, default=5120, help="message size in bytes")
    p.add_argument("--client", choices=("asyncio", "smtp-source"), default="asyncio")
    p.add_argument(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="asyncio client: send MAIL, RCPT, DATA one at a time (like smtp-source)",
    )
    p.add_argument(
        "--experiment-nodelay",
        action="store_true",
        help="experiment: set TCP_NODELAY on mailgate's accepted sockets (through the hook)",
    )
    p.add_argument("--runs", type=int, default=1, help="runs, each on a fresh mailgate")
    p.add_argument(
        "--compare-postfix",
        action="store_true",
        help="after each run, send the same smtp-source load to a private Postfix instance "
        "(own config dir, queue and port; delivers to a Maildir; needs root)",
    )
    p.add_argument("--postfix", default="/usr/sbin/postfix", help="postfix(1) path")
    p.add_argument("--smtp-source", default="/usr/sbin/smtp-source", help="smtp-source path")
    p.add_argument(
        "--relay",
        action="store_true",
        help="relay path: every recipient is remote and goes to a smarthost, Postfix's "
        "smtp-sink; 'delivered' counts what the smarthost connector delivered",
    )
    p.add_argument("--smtp-sink", default="/usr/sbin/smtp-sink", help="smtp-sink path")
    p.add_argument(
        "--receive",
        type=int,
        default=0,
        help="mailgate receive processes ([processes] receive; 0: one per core)",
    )
    p.add_argument(
        "--postoffice-threads",
        type=int,
        default=0,
        help="mailgate delivery threads ([postoffice] threads; 0: mailgate's default)",
    )
    p.add_argument("--python", default=default_python(), help="interpreter that runs mailgate")
    p.add_argument(
        "--src",
        default=None,
        help="run mailgate from this src/ directory (put first on PYTHONPATH), e.g. a snapshot "
        "made with `git archive HEAD src | tar -x -C /tmp/snap`",
    )
    p.add_argument("--tmp-dir", default=None, help="parent of the temporary data directory")
    p.add_argument("--timeout", type=float, default=None, help="deadline of the sending phase")
    p.add_argument("--stall-timeout", type=float, default=30.0, help="give up after no reply")
    p.add_argument("--deliver-timeout", type=float, default=None, help="deadline of delivery")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM to SIGKILL")
    p.add_argument(
        "--no-commit-stats",
        dest="commit_stats",
        action="store_false",
        help="run plain `python -m mailgate` (no committer statistics)",
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=120.0,
        help="before each run wait up to this long for the host to be idle (0: don't)",
    )
    p.add_argument("--keep", action="store_true", help="keep the data directory (debugging)")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.messages < 1 or args.size < 64 or args.runs < 1:
        p.error("--sessions, --messages and --runs must be >= 1, --size >= 64")
    if args.timeout is None:
        args.timeout = 120.0 + args.messages / 10
    if args.deliver_timeout is None:
        args.deliver_timeout = 60.0 + args.messages / 50
    needs_source = args.client == "smtp-source" or args.compare_postfix
    if needs_source and not os.access(args.smtp_source, os.X_OK):
        p.error(f"{args.smtp_source} is not executable")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so every `finally` (stop mailgate, remove the data) runs

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        origin = mailgate_origin(args.python, args.src)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mailgate from {origin} (run by {args.python})", flush=True)
    note = journal_note(args.tmp_dir or tempfile.gettempdir())
    if note:
        print(note, flush=True)
    try:
        return run_all(args)
    finally:
        remove_leftovers()


def run_all(args: argparse.Namespace) -> int:
    failed = False
    for run in range(1, args.runs + 1):
        print(
            f"run {run}/{args.runs}: client={args.client} sessions={args.sessions} "
            f"messages={args.messages} size={args.size}",
            flush=True,
        )
        runs = [run_mailgate] + ([run_postfix] if args.compare_postfix else [])
        for one in runs:
            if args.quiet_timeout > 0:
                busy = wait_for_quiet(0.10, args.quiet_timeout)
                if busy > 0.10:
                    print(f"  warning: host still {busy:.0%} busy before the run", flush=True)
            try:
                m = one(args)
            except BenchError as exc:
                print(f"  error: {exc}", flush=True)
                failed = True
                continue
            print(report(m), flush=True)
            failed |= bool(m.errors) or m.accepted < m.messages or m.delivered < m.accepted
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
