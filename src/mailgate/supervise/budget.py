"""The restart budget and back-off of one supervised thing: a thread, or a worker process.

`spend(now)` counts a restart; past `max_restarts` within `window` seconds the budget
is spent and the thing is failed rather than restarted. `backoff(structural)` is the
wait before the next start: it doubles with each restart in the window, from
BACKOFF_FIRST, up to BACKOFF_MAX. One that died before finishing its first job waits
BACKOFF_STRUCTURAL / BACKOFF_FIRST times longer: like Postfix's master, we assume we
see the symptom of a structural problem, which restarting at once would only repeat.
The supervisor (threads) and the master (worker processes) both use it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BACKOFF_FIRST = 1.0
BACKOFF_STRUCTURAL = 5.0
BACKOFF_MAX = 30.0


@dataclass(slots=True)
class RestartBudget:
    max_restarts: int
    window: float
    first: float = BACKOFF_FIRST  # tests shorten it
    recent: deque[float] = field(default_factory=deque)

    @property
    def used(self) -> int:
        """Restarts counted within the window (as of the last `spend`)."""
        return len(self.recent)

    def spend(self, now: float) -> bool:
        """Count a restart at `now`; False once more than max_restarts fall in the window."""
        self.recent.append(now)
        while self.recent and now - self.recent[0] > self.window:
            self.recent.popleft()
        return len(self.recent) <= self.max_restarts

    def backoff(self, structural: bool) -> float:
        """Seconds to wait before the next start."""
        factor = BACKOFF_STRUCTURAL / BACKOFF_FIRST if structural else 1.0
        return min(BACKOFF_MAX, self.first * factor * 2.0 ** (max(1, self.used) - 1))
