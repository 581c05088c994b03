"""The data directory lock: one service per data directory.

An exclusive flock on `<data-dir>/mailgate.pid`, with the holder's PID written
inside. The kernel drops the lock when its holder dies, even by SIGKILL, so a
lock left by a killed process is stale by construction and is simply taken over;
a live holder is named in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mailgate.errors import AlreadyRunning


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "mailgate.pid"
        self._fd: int | None = None
        self.previous_pid: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(str(self.path.parent), holder) from None
        self.previous_pid = _read_pid(fd)  # a PID left here belonged to a process now gone
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> int | None:
        """PID of a running holder, or None (used by tools that do not take the lock)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        finally:
            os.close(fd)
        return None


def _read_pid(fd: int) -> int | None:
    data = os.pread(fd, 32, 0).strip()
    return int(data) if data.isdigit() else None
