"""The instance locks: one service per data directory, and one per queue store.

Each is an exclusive flock on a small file with the holder's PID written inside:
`<data-dir>/mailgate.pid`, and `<queue file>-owner` beside the store (its real path,
symlinks resolved), which also names the holder's data directory. Two services with
different data directories but one `[queue] path` would otherwise both start, and the
second, taking every lease for a dead process's, would release the first's live ones
and deliver its work again (Q168857). The kernel drops a lock when its holder dies,
even by SIGKILL, so a lock left by a killed process is stale by construction and is
simply taken over; a live holder is named in the refusal. Lock files are opened with
O_NOFOLLOW: a symlink planted there is refused, not followed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mailgate.errors import AlreadyRunning, StoreInUse


class _PidFile:
    """An exclusive flock on `path` holding the holder's PID (and a note) while held."""

    def __init__(self, path: Path, dir_mode: int = 0o777) -> None:
        self.path = path
        self.dir_mode = dir_mode
        self._fd: int | None = None
        self.previous_pid: int | None = None

    def take(self, note: str = "") -> tuple[int | None, str] | None:
        """Take the lock; None, or the (pid, note) of the live holder that has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=self.dir_mode)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            return holder
        self.previous_pid = _read(fd)[0]  # a PID left here belonged to a process now gone
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{note}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


class DataDirLock(_PidFile):
    """One service per data directory and, given its queue file, per store."""

    def __init__(self, data_dir: Path, queue_path: Path | None = None) -> None:
        super().__init__(data_dir / "mailgate.pid")
        self.data_dir = data_dir
        self.store = StoreLock(queue_path, data_dir) if queue_path is not None else None

    def acquire(self) -> None:
        """Take both locks or raise AlreadyRunning / StoreInUse naming the holder."""
        holder = self.take()
        if holder is not None:
            raise AlreadyRunning(str(self.data_dir), holder[0])
        if self.store is not None:
            try:
                self.store.acquire()
            except BaseException:
                super().release()
                raise

    def release(self) -> None:
        if self.store is not None:
            self.store.release()
        super().release()

    def holder(self) -> int | None:
        """PID of a running holder, or None (used by tools that do not take the lock)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)[0]
        finally:
            os.close(fd)
        return None


class StoreLock(_PidFile):
    """One service per queue store, whatever path or data directory leads to it."""

    def __init__(self, queue_path: Path, data_dir: Path) -> None:
        real = queue_path.resolve()  # symlinks resolved: every path to it meets one lock
        super().__init__(real.with_name(real.name + "-owner"), dir_mode=0o700)
        self.queue_path = queue_path
        self.data_dir = data_dir

    def acquire(self) -> None:
        holder = self.take(str(self.data_dir.resolve()))
        if holder is not None:
            pid, their_dir = holder
            raise StoreInUse(str(self.queue_path), pid, their_dir or "?")


def _read(fd: int) -> tuple[int | None, str]:
    first, _, rest = os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")
    pid = int(first.strip()) if first.strip().isdigit() else None
    return pid, rest.strip()
