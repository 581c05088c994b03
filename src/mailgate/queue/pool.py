"""A bounded pool of PostgreSQL connections with no thread of its own.

Every thread the service starts is registered with its supervisor; a library pool's
maintenance threads would not be (psycopg_pool starts a scheduler and workers), so
this one does its housekeeping in the callers' own calls: `take` hands out an idle
connection or, below `size`, opens one in the caller's thread (a refused login is
the caller's StoreError at once, with the server's reason); at `size` it waits up to
`timeout` for one to come back, then raises PoolBusy. `give` keeps a healthy idle
connection, closes a broken one, and on a broken one closes the idle ones too (the
server went away, most likely: they are dead as well), so the next take connects
afresh. `take` never hands out an idle connection the server ended (a restart,
pg_terminate_backend): its last words wait on its socket, read without a round trip,
so a transaction whose BEGIN is pipelined with the rest does not meet it. Connections
idle longer than `max_idle` are closed on the next take or give, the newest one kept.
A pool never crosses a fork: its sockets are the parent's. No lock is held while
connecting or closing (Q151669): only the counters are guarded.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

PgConnection = psycopg.Connection[tuple[Any, ...]]
MAX_IDLE = 600.0  # seconds an idle connection beyond the first is kept


class PoolBusy(Exception):
    """Every connection of the pool stayed in use for the whole wait."""


class Pool:
    def __init__(
        self,
        connect: Callable[[], PgConnection],
        size: int,
        timeout: float,
        *,
        max_idle: float = MAX_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.size = size
        self.timeout = timeout
        self._max_idle = max_idle
        self._clock = clock
        self._idle: list[tuple[PgConnection, float]] = []  # (connection, idle since), newest last
        self._out = 0  # handed out, or being opened
        self._cond = threading.Condition(threading.Lock())
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"Pool(size={self.size}, idle={len(self._idle)}, out={self._out})"

    def take(self) -> PgConnection:
        """An open connection, or PoolBusy after `timeout`; psycopg.Error if one cannot
        be opened."""
        deadline = self._clock() + self.timeout
        with self._cond:
            while not self._idle and self._out >= self.size:
                left = deadline - self._clock()
                if left <= 0:
                    raise PoolBusy(f"all {self.size} connections in use")
                self._cond.wait(left)
            conn = self._idle.pop()[0] if self._idle else None
            self._out += 1
            stale = self._stale()
        self._close_all(stale)
        if conn is not None:
            if not _ended(conn):
                return conn
            self._close_all([conn])
        try:
            return self._connect()
        except BaseException:
            self._returned()
            raise

    def give(self, conn: PgConnection) -> None:
        """Take `conn` back: kept if healthy and idle, closed otherwise."""
        healthy = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        doomed: list[PgConnection] = [] if healthy else [conn]
        with self._cond:
            self._out -= 1
            if healthy:
                self._idle.append((conn, self._clock()))
            elif conn.broken:
                doomed += [c for c, _ in self._idle]
                self._idle.clear()
            doomed += self._stale()
            self._cond.notify()
        self._close_all(doomed)

    def close(self) -> None:
        """Close the idle connections; ones handed out are closed when given back."""
        with self._cond:
            doomed = [c for c, _ in self._idle]
            self._idle.clear()
        self._close_all(doomed)

    def statistics(self) -> dict[str, int]:
        with self._cond:
            return {"size": self.size, "idle": len(self._idle), "in_use": self._out}

    def _returned(self) -> None:
        with self._cond:
            self._out -= 1
            self._cond.notify()

    def _stale(self) -> list[PgConnection]:
        """Idle connections past max_idle, beyond the newest one (under the lock)."""
        limit = self._clock() - self._max_idle
        stale = [c for c, since in self._idle[:-1] if since < limit]
        if stale:
            self._idle = [(c, since) for c, since in self._idle[:-1] if since >= limit] + [
                self._idle[-1]
            ]
        return stale

    @staticmethod
    def _close_all(conns: list[PgConnection]) -> None:
        for conn in conns:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()


def _ended(conn: PgConnection) -> bool:
    """Whether an idle connection is closed or was ended by the server, found without a
    round trip: an idle connection is sent nothing unasked but the server's last words
    (a FATAL error, then EOF), so input waiting on its socket is read to see which."""
    poll = select.poll()
    for _ in range(3):  # the error message, then the end of the stream
        if conn.closed or conn.broken:
            return True
        poll.register(conn.fileno(), select.POLLIN)
        if not poll.poll(0):
            return False
        try:
            conn.pgconn.consume_input()
        except psycopg.Error:
            return True
    return conn.closed or conn.broken
