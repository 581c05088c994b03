"""receive.board: concurrent sessions per client address, counted across an instance.

The per-address session limit is the instance's, not one receive process's: the
kernel spreads a client's connections over every worker accepting on the port, so a
count per process would let one client hold `max_sessions_per_ip` times the number
of workers. The master creates one shared table (a memfd, never a file on disk);
each receive worker owns one row of it and writes only there, and reads the sum of
every row for an address. Addresses hash (CRC-32, the same in every process) into a
fixed number of buckets, so the table is bounded whatever the clients (and one more cell
per row holds the worker's sessions of every address, exempt ones too: a lone session may
then linger after its replies, receive/linger.py); two addresses
sharing a bucket only ever count more, never less. A check-and-count takes a POSIX
record lock on the table, so two workers admitting the same client at once cannot
both take its last slot.

A worker that dies leaves its row counting sessions the kernel already closed: the
master clears the row when it handles the death, and a worker clears its own row
when it starts. In one process (`--single-process`, tests) the table is an
anonymous one with a single row. Failure: none at run time (memory only); creating
the memfd can fail at start with OSError, which reaches the caller.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib

BUCKETS = 1 << 16  # per row: 256 KiB of 32-bit counters
_CELL = 4
_ROW = BUCKETS + 1  # cells per row: the buckets, then the worker's sessions of every address


class SessionBoard:
    """A shared table of session counts: `rows` rows of BUCKETS counters; this process
    writes only row `row` (None: the master, which only clears rows)."""

    def __init__(self, fd: int, rows: int, row: int | None) -> None:
        if row is not None and not 0 <= row < rows:
            raise ValueError(f"session board row {row} outside 0..{rows - 1}")
        self.fd = fd
        self.rows = rows
        self.row = row
        self._map = mmap.mmap(fd, rows * _ROW * _CELL)
        self._cells = memoryview(self._map).cast("I")
        if row is not None:
            self.clear(row)

    @classmethod
    def create(cls, rows: int, row: int | None = None) -> SessionBoard:
        """A new zeroed table, its fd inheritable by the workers given it in pass_fds."""
        fd = os.memfd_create("mailgate-sessions")  # close-on-exec but for pass_fds
        os.ftruncate(fd, rows * _ROW * _CELL)
        return cls(fd, rows, row)

    @staticmethod
    def bucket(ip: str) -> int:
        return zlib.crc32(ip.encode()) & (BUCKETS - 1)

    def try_add(self, ip: str, limit: int) -> bool:
        """Count one more session of `ip` in this process's row unless the instance
        already has `limit` of them; False (nothing counted) if it has."""
        assert self.row is not None, "only a receive process counts sessions"
        bucket = self.bucket(ip)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            if self._count(bucket) >= limit:
                return False
            self._cells[self.row * _ROW + bucket] += 1
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def remove(self, ip: str) -> None:
        """One session of `ip` counted by this process ended."""
        assert self.row is not None, "only a receive process counts sessions"
        cell = self.row * _ROW + self.bucket(ip)
        if self._cells[cell] > 0:  # a row cleared under us (never expected) stays at zero
            self._cells[cell] -= 1

    def count(self, ip: str) -> int:
        """Sessions of `ip` (and of any address sharing its bucket) in the instance."""
        return self._count(self.bucket(ip))

    def _count(self, bucket: int) -> int:
        cells = self._cells
        return sum(cells[r * _ROW + bucket] for r in range(self.rows))

    def set_open(self, sessions: int) -> None:
        """This process has `sessions` sessions open, of every address (exempt ones too)."""
        assert self.row is not None, "only a receive process counts sessions"
        self._cells[self.row * _ROW + BUCKETS] = max(sessions, 0)

    def open_sessions(self) -> int:
        """Sessions open in the instance, every worker's (each written without a lock by its
        own worker: a moment old at most)."""
        cells = self._cells
        return sum(cells[r * _ROW + BUCKETS] for r in range(self.rows))

    def clear(self, row: int) -> None:
        """Forget every session of `row`: its worker has died or is starting afresh."""
        start = row * _ROW * _CELL
        self._map[start : start + _ROW * _CELL] = bytes(_ROW * _CELL)

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        os.close(self.fd)
