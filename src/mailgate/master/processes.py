"""The master's view of one worker process: its pipe, heartbeat, replies and restart budget.

Commands go down the worker's stdin as JSON lines. No lock is held across that
write where the channel thread could meet it: `_lock` guards only the table of
pending replies, and writers take turns with `_write_lock`, writing without
blocking until the caller's deadline. A worker that stops reading (wedged) makes
its callers time out, never the channel thread that reads every worker's events;
what a timed-out call could not send goes first on the next one, so lines stay whole.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mailgate.supervise.budget import RestartBudget

# The path of the validated configuration, as JSON, in a file only the service's user can
# read: never the configuration itself, whose queue URL may hold a password (a process's
# environment is readable in /proc by the same user, and copied into every child).
WORKER_CONFIG = "MAILGATE_WORKER_CONFIG_FILE"
WORKER_SOCKETS = "MAILGATE_WORKER_SOCKETS"  # receive workers: inherited listening fds, as JSON


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    role: str
    name: str


@dataclass
class WorkerProcess:
    spec: WorkerSpec
    budget: RestartBudget  # the supervisor's own, as for a thread
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    last_heard: float = 0.0
    heartbeats: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    restart_at: float | None = 0.0  # due to be (re)started; None once running
    failed: bool = False
    handled_exit: bool = False
    killed: bool = False  # the master ended it (wedged or stuck); its death is yet to come
    channel_closed: bool = False  # its stdout reached EOF: every event it sent was read
    last_words: str = ""  # the reason it gave for exiting (event 5020), if any
    buffer: bytes = b""
    _replies: dict[int, Future[Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the replies table only
    _write_lock: threading.Lock = field(default_factory=threading.Lock)  # one writer at a time
    _unsent: bytes = b""  # the rest of a line a timed-out call could not write

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.started_at = proc, time.time()
        self.last_heard, self.heartbeats, self.status = self.started_at, 0, {}
        self.restart_at, self.handled_exit, self.buffer = None, False, b""
        self.killed = False
        self.channel_closed, self.last_words, self._unsent = False, "", b""
        assert proc.stdout is not None and proc.stdin is not None
        os.set_blocking(proc.stdout.fileno(), False)
        os.set_blocking(proc.stdin.fileno(), False)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def call(self, command: str, args: dict[str, Any], timeout: float = 1.0) -> Any:
        """Run a command in the worker; raises TimeoutError if it does not answer in time."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} is not running")
        deadline = time.monotonic() + timeout
        future: Future[Any] = Future()
        with self._lock:
            ident = next(self._ids)
            self._replies[ident] = future
        data = json.dumps({"id": ident, "command": command, "args": args}).encode() + b"\n"
        try:
            self._send(proc.stdin.fileno(), data, deadline)
            return future.result(max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                self._replies.pop(ident, None)

    def _send(self, fd: int, data: bytes, deadline: float) -> None:
        """Write one line by `deadline` (TimeoutError); the stdin pipe is non-blocking."""
        if not self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"worker {self.name}: another command is still being written")
        try:
            prefix, self._unsent = self._unsent, b""
            line = prefix + data
            written = 0
            while written < len(line):
                try:
                    written += os.write(fd, line[written:])
                    continue
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise RuntimeError(f"worker {self.name}: {exc}") from None
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    # Finish a started line next time; a command not started is dropped.
                    if written < len(prefix):
                        self._unsent = line[written : len(prefix)]
                    elif written > len(prefix):
                        self._unsent = line[written:]
                    raise TimeoutError(f"worker {self.name} is not reading its commands")
        finally:
            self._write_lock.release()

    def reply(self, message: dict[str, Any]) -> None:
        with self._lock:
            future = self._replies.get(message.get("id", -1))
        if future is None or future.done():
            return
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            future.set_exception(RuntimeError(str(message.get("error"))))
