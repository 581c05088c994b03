"""Retry back-off and lifetime (pure logic, explicit clock values)."""

from mailgate.queue.retry import RetryPolicy


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = RetryPolicy(minimum=300, maximum=4020, lifetime=5 * 86400)
    assert [policy.delay(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4020, 4020]
    assert policy.delay(0) == 300
    assert policy.delay(10_000) == 4020


def test_lifetime() -> None:
    policy = RetryPolicy(lifetime=100)
    assert not policy.expired(received_at=1000, now=1099)
    assert policy.expired(received_at=1000, now=1100)
