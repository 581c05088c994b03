"""A `mailgate run` subprocess for the benchmarks, on a temporary data directory of its own.

Started as `python -m mailgate run` on a free 127.0.0.1 port, with the admin listener off,
optionally with extra environment for the service alone (the flush shim's LD_PRELOAD: worker
processes inherit it, the bench's own CLI calls do not get it) and with a sitecustomize.py
(HOOK) first on its PYTHONPATH that records the group committer's statistics and how long
each DATA took to be answered (see HOOK). Talks to the service over its control socket in
plain JSON, so the bench needs no import of the mailgate being measured (which may come from
another src/ tree, --src). Stop: SIGTERM, then SIGKILL of the master and its workers after a
deadline. Raises BenchError with the tail of mailgate's stderr when it does not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from measure import (
    BenchError,
    command_line,
    descendants,
    free_port,
    rss_bytes,
    tree_cpu_seconds,
    wait_greeting,
)

ROOT = Path(__file__).resolve().parent.parent
MAILBOXES = ("U1", "U2", "U3", "U4")
NET, PO = "BENCH", "PO"
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

# Written as sitecustomize.py into a directory put first on mailgate's PYTHONPATH, so that
# `python -m mailgate run` and every worker process it starts (they inherit the environment)
# import it at start-up. It wraps the group committer so that its statistics, how many
# operations of each kind it committed and the DATA-to-reply times of the process (from
# ReceiveHandler.handle_DATA being called, or the message built (its received_at), once the
# final "." was read, to its reply: the
# server's side of DATA-to-250) go to $MAILGATE_BENCH_STATS.<pid> when the commit thread ends
# (a clean stop); with MAILGATE_BENCH_NODELAY=1 it sets TCP_NODELAY on accepted SMTP sockets.
# Anything it cannot find (the code is being changed) is left alone.
HOOK = """
import os
import time

LATENCIES = []

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
                          "batches_with_enqueue": with_enqueue[0], "latencies": LATENCIES}
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

def _latency():
    try:
        from mailgate.receive import smtp
        handler = smtp.ReceiveHandler
    except Exception:
        return
    durable = getattr(handler, "durable", None)
    if durable is not None:
        # Trees with the session's fast path: the reply is built by durable(), once the
        # commit ended; message.received_at is when the final "." had been read.
        def timed_durable(self, message, error, *more):
            try:
                return durable(self, message, error, *more)
            finally:
                LATENCIES.append(time.time() - message.received_at)

        handler.durable = timed_durable
        return
    original = handler.handle_DATA

    async def handle_DATA(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            LATENCIES.append(time.perf_counter() - started)

    handler.handle_DATA = handle_DATA

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
    _latency()
if os.environ.get("MAILGATE_BENCH_NODELAY") == "1":
    _nodelay()
"""


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def add_mailgate_options(p: argparse.ArgumentParser) -> None:
    """Which mailgate runs: --python (its interpreter) and --src (another src/ tree)."""
    p.add_argument("--python", default=default_python(), help="interpreter that runs mailgate")
    p.add_argument(
        "--src",
        default=None,
        help="run mailgate from this src/ directory (put first on PYTHONPATH), e.g. a snapshot "
        "made with `git archive HEAD src | tar -x -C /tmp/snap`",
    )


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
        capture_output=True, text=True, timeout=60, check=False, env=mailgate_env(src),
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchError(f"{python} cannot import mailgate: {result.stderr.strip()[-300:]}")
    return str(Path(result.stdout.strip()).parent)


def hook_path(root: Path, hook: str, src: str | None) -> str:
    """A PYTHONPATH for the service that runs `hook` as its sitecustomize (written into
    ROOT/hook) before mailgate's own tree (`src`, when one is given)."""
    directory = root / "hook"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(hook)
    return ":".join([str(directory), *([str(Path(src).resolve())] if src else [])])


def with_setting(config: str, section: str, line: str) -> str:
    """`config` with `line` at the top of [section] (the section added if missing)."""
    header = f"[{section}]\n"
    if header in config:
        return config.replace(header, header + line + "\n", 1)
    return config + f"\n{header}{line}\n"


def setting_arg(text: str) -> tuple[str, str]:
    """argparse type of a `--set 'section: key = value'` option: (section, line), or a
    usage error naming what is wrong."""
    section, colon, line = text.partition(":")
    if not colon or not section.strip() or "=" not in line or not line.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'section: key = value'")
    return section.strip(), line.strip()


def with_settings(config: str, settings: list[tuple[str, str]]) -> str:
    """`config` with each (section, line) of `setting_arg` put in (see with_setting)."""
    for section, line in settings:
        config = with_setting(config, section, line)
    return config


class Mailgate:
    """One `mailgate run` subprocess on its own temporary data directory."""

    def __init__(
        self,
        root: Path,
        python: str,
        *,
        src: str | None = None,
        config: str = CONFIG,
        commit_stats: bool = True,
        nodelay: bool = False,
        service_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.python = python
        self.env = mailgate_env(src)
        self.service_env = dict(service_env or {})
        self.data_dir = root / "var"
        self.config = root / "mailgate.toml"
        self.config.write_text(config)
        self.stats_path = root / "commit-stats.json"
        self.hook_dir = root / "hook"
        self.stderr_path = root / "stderr.log"
        self.commit_stats = commit_stats
        self.nodelay = nodelay
        self.port = 0
        self.smarthost = ""
        self.proc: subprocess.Popen[bytes] | None = None

    # --- command line and control socket ---------------------------------------------------------
    def cli(self, *args: str, timeout: float = 120.0, where: bool = True) -> str:
        """Run `mailgate ARGS --config .. --data-dir ..` (no options with `where` False)."""
        options = ("--config", str(self.config), "--data-dir", str(self.data_dir))
        result = subprocess.run(
            [self.python, "-m", "mailgate", *args, *(options if where else ())],
            capture_output=True, text=True, timeout=timeout, check=False, env=self.env,
        )  # fmt: skip
        if result.returncode != 0:
            raise BenchError(f"mailgate {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def control(self, command: str, args: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """One request on the control socket; BenchError if it fails, OSError if none answers."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.data_dir / "run" / "control.sock"))
            sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if not reply.get("ok"):
            raise BenchError(f"mailgate ctl {command}: {reply.get('error')}")
        return reply.get("result")

    def queue_state(self, connector: str) -> dict[str, Any]:
        queues: dict[str, Any] = self.control("status")["queues"]
        return dict(queues.get(connector, {}))

    def set_paused(self, connector: str, paused: bool, timeout: float = 20.0) -> None:
        """Pause or resume a connector and wait until the status says so."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, BenchError, ValueError, KeyError):
                self.control("pause" if paused else "resume", {"connector": connector})
                if bool(self.queue_state(connector).get("paused")) == paused:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"could not {'pause' if paused else 'resume'} {connector}")
            time.sleep(0.1)

    def add_mailboxes(self) -> list[str]:
        return [self.cli("mailbox", "add", f"MS:{NET}/{PO}/{mbx}") for mbx in MAILBOXES]

    def new_dirs(self) -> list[Path]:
        return [self.data_dir / "postoffice" / NET / PO / mbx / "new" for mbx in MAILBOXES]

    # --- the process -----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> float:
        """Start the service; the seconds until it greeted on its SMTP port."""
        self.port = self.port or free_port()
        env = {**self.env, **self.service_env}
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
        started = time.monotonic()
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [self.python, "-m", "mailgate", *args],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )  # fmt: skip
        try:
            wait_greeting(self.port, timeout, self.alive)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"mailgate: {exc}: {self.stderr()[-800:]}") from None
        return time.monotonic() - started

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> dict[int, str]:
        """The master's and every worker's pid, with its role (from its command line)."""
        if not self.alive():
            return {}
        assert self.proc is not None
        found = {self.proc.pid: "master"}
        for pid in descendants(self.proc.pid):
            words = command_line(pid).split()
            role = words[words.index("--role") + 1] if "--role" in words[:-1] else "child"
            found[pid] = role
        return found

    def rss(self) -> dict[str, int]:
        """Resident bytes of each process, keyed `role pid`."""
        return {f"{role} {pid}": rss_bytes(pid) for pid, role in self.pids().items()}

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid if self.proc else None)

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

    # --- what it wrote ---------------------------------------------------------------------------
    def stderr(self) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return text[-2000:]

    def read_commit_stats(self) -> dict[str, Any] | None:
        """The committer statistics of every process that had one, added up; `latencies` are
        every receive process's DATA-to-reply times in seconds."""
        found: dict[str, Any] = {}
        kinds: dict[str, int] = {}
        latencies: list[float] = []
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
            latencies.extend(stats.get("latencies", []))
            found["processes"] = found.get("processes", 0) + 1
        if found:
            found["kinds"] = kinds
            found["latencies"] = latencies
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

    def relayed(self) -> int:
        """Recipients the smarthost connector delivered, from the status."""
        return int(self.queue_state("smarthost").get("delivered", 0))
