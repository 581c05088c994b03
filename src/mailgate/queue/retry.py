"""Retry policy: exponential back-off between a minimum and a maximum delay, and a
maximum lifetime after which a message still failing temporarily is bounced
(Postfix's minimal/maximal_backoff_time and maximal_queue_lifetime). Pure logic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    minimum: float = 300.0
    maximum: float = 4020.0
    lifetime: float = 5 * 86400.0

    def delay(self, attempts: int) -> float:
        """Delay before the next attempt, after `attempts` attempts so far (at least 1)."""
        exponent = max(attempts - 1, 0)
        if exponent > 60:
            return self.maximum
        return float(min(self.maximum, self.minimum * 2.0**exponent))

    def expired(self, received_at: float, now: float) -> bool:
        return now - received_at >= self.lifetime


def expired_reply(last: str) -> str:
    """The final reply of a recipient whose message outlived the maximum lifetime
    (RFC 3463 X.4.7, delivery time expired), carrying the last thing that happened."""
    return f"554 5.4.7 message expired in queue; last error: {last}"
