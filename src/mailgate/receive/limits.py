"""Connection and AUTH limits of a receive process, with the replies they cost a client.

Sessions are capped in total per process and per client address across the instance
(421 4.7.0 at connect, then the connection is closed; board.py shares the count), so a
flood of connections, or one client holding many slow ones, cannot take every
session; trusted clients (relay_networks, by default) have no per-address cap.
Failed AUTH attempts are counted per client address over a window; past the limit
further attempts are refused (454 4.7.0) without checking the password, which keeps
guessing slow and cheap to refuse.
Used from the event loop thread only.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

from mailgate.receive.board import SessionBoard


class SessionLimiter:
    """Sessions in total (this process) and per client address (the whole instance,
    through the shared SessionBoard). Addresses `exempt` says are trusted (clients in
    relay_networks, as Postfix exempts $mynetworks from its client limits) are counted
    in the total only."""

    def __init__(
        self,
        max_total: int,
        max_per_ip: int,
        board: SessionBoard | None = None,
        exempt: Callable[[str], bool] = lambda ip: False,
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.board = board or SessionBoard.create(1, 0)
        self.exempt = exempt
        self.total = 0
        self.per_ip: dict[str, int] = defaultdict(int)  # this process's counted sessions

    def acquire(self, ip: str) -> str | None:
        """Count a new session; a 421 reply if it is over a limit (then nothing is counted)."""
        if self.total >= self.max_total:
            return "421 4.7.0 Too many connections, try again later"
        if not self.exempt(ip):
            if not self.board.try_add(ip, self.max_per_ip):
                return "421 4.7.0 Too many connections from your address, try again later"
            self.per_ip[ip] += 1
        self.total += 1
        self.board.set_open(self.total)
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.board.set_open(self.total)
        # Only what acquire counted: an exemption changed by a reload meanwhile is no matter.
        if ip in self.per_ip:
            self.board.remove(ip)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]


class AuthThrottle:
    def __init__(self, failures: int, window: float) -> None:
        self.failures = failures
        self.window = window
        self._failed: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, ip: str, now: float | None = None) -> bool:
        times = self._failed.get(ip)
        if not times:
            return False
        now = time.monotonic() if now is None else now
        while times and now - times[0] > self.window:
            times.popleft()
        if not times:
            del self._failed[ip]
            return False
        return len(times) >= self.failures

    def failed(self, ip: str, now: float | None = None) -> None:
        self._failed[ip].append(time.monotonic() if now is None else now)

    def succeeded(self, ip: str) -> None:
        self._failed.pop(ip, None)
