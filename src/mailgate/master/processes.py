"""The master's view of one worker process: its pipe, heartbeat, replies and restart budget."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

WORKER_CONFIG = "MAILGATE_WORKER_CONFIG"  # the validated configuration, as JSON
WORKER_SOCKETS = "MAILGATE_WORKER_SOCKETS"  # receive workers: inherited listening fds, as JSON


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    role: str
    name: str


@dataclass
class WorkerProcess:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    last_heard: float = 0.0
    heartbeats: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)
    restart_at: float | None = 0.0  # due to be (re)started; None once running
    failed: bool = False
    handled_exit: bool = False
    buffer: bytes = b""
    _replies: dict[int, Future[Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)

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
        future: Future[Any] = Future()
        with self._lock:
            ident = next(self._ids)
            self._replies[ident] = future
            data = json.dumps({"id": ident, "command": command, "args": args}).encode() + b"\n"
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except OSError as exc:
                self._replies.pop(ident, None)
                raise RuntimeError(f"worker {self.name}: {exc}") from None
        try:
            return future.result(timeout)
        finally:
            with self._lock:
                self._replies.pop(ident, None)

    def reply(self, message: dict[str, Any]) -> None:
        with self._lock:
            future = self._replies.get(message.get("id", -1))
        if future is None or future.done():
            return
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            future.set_exception(RuntimeError(str(message.get("error"))))
