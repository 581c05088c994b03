"""Per-destination limits (connectors/limits.py): the token bucket on a fake clock, the
connection count, idle connections handed between threads, messages per connection."""

from __future__ import annotations

import threading
import time

import pytest

from mailgate.connectors.limits import Destinations, Limits, TokenBucket
from tests.support.process import wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token every 1/rate seconds
    assert bucket.take(0.25) == pytest.approx(0.25), "half a token has come back"
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0), "capped at burst"


def test_admit_is_a_rate_per_destination_on_the_given_clock() -> None:
    clock = FakeClock()
    dest: Destinations[object] = Destinations(Limits(rate=1.0), clock=clock)
    assert dest.admit("a") == 0.0
    assert dest.admit("a") == pytest.approx(1.0)
    assert dest.admit("b") == 0.0, "each destination has its own bucket"
    clock.now += 0.4
    assert dest.admit("a") == pytest.approx(0.6)
    clock.now += 0.6
    assert dest.admit("a") == 0.0
    assert Destinations[object](Limits()).admit("a") == 0.0, "no rate: always admitted"


def test_the_connection_limit_counts_open_slots_per_destination() -> None:
    dest: Destinations[str] = Destinations(Limits(connections=2))
    one, two = dest.acquire("mx"), dest.acquire("mx")
    assert one is not None and two is not None and one.conn is None
    assert dest.acquire("mx", timeout=0) is None, "at the limit"
    assert dest.acquire("other", timeout=0) is not None, "another destination is not limited"
    dest.release(one)
    assert dest.acquire("mx", timeout=0) is not None
    [stats] = [s for s in dest.statistics() if s.destination == "mx"]
    assert (stats.open, stats.idle, stats.waiting) == (2, 0, 0)


def test_an_idle_connection_is_taken_over_with_its_connection_not_opened_anew() -> None:
    dest: Destinations[str] = Destinations(Limits(connections=1))
    mine = dest.acquire("mx")
    assert mine is not None
    mine.conn, mine.messages = "socket-1", 3
    dest.pause(mine)
    assert dest.resume(mine) and mine.conn == "socket-1", "its holder may use it again"
    dest.pause(mine)
    theirs = dest.acquire("mx", timeout=0)
    assert theirs is not None and (theirs.conn, theirs.messages) == ("socket-1", 3)
    assert not dest.resume(mine), "taken over: the old holder must forget it"
    assert mine.conn is None
    dest.release(mine)  # a no-op: the place went with the connection
    assert dest.acquire("mx", timeout=0) is None, "still one open, the limit"
    dest.release(theirs)
    assert dest.statistics() == [], "a destination nothing holds is forgotten"


def test_a_thread_at_the_limit_waits_for_a_release_bounded() -> None:
    dest: Destinations[str] = Destinations(Limits(connections=1, wait=5.0))
    held = dest.acquire("mx")
    assert held is not None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(dest.acquire("mx")))
    waiter.start()
    wait_for(lambda: dest.statistics()[0].waiting == 1, 5, what="a thread waiting")
    dest.release(held)
    waiter.join(5)
    assert got and got[0] is not None
    started = time.monotonic()
    assert dest.acquire("mx", timeout=0.1) is None
    assert 0.09 <= time.monotonic() - started < 2, "gave up after its timeout"


def test_a_paused_slot_wakes_a_waiter_with_its_connection() -> None:
    dest: Destinations[str] = Destinations(Limits(connections=1, wait=5.0))
    held = dest.acquire("mx")
    assert held is not None
    held.conn = "socket-1"
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(dest.acquire("mx")))
    waiter.start()
    wait_for(lambda: dest.statistics()[0].waiting == 1, 5, what="a thread waiting")
    dest.pause(held)
    waiter.join(5)
    assert [getattr(s, "conn", None) for s in got] == ["socket-1"]


def test_messages_per_connection() -> None:
    dest: Destinations[str] = Destinations(Limits(messages_per_connection=2))
    slot = dest.acquire("mx")
    assert slot is not None
    slot.messages = 1
    assert not dest.exhausted(slot)
    slot.messages = 2
    assert dest.exhausted(slot)
    assert not Destinations[str]().exhausted(slot), "0: no limit"


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Limits(connections=-1)
    with pytest.raises(ValueError, match="burst"):
        Limits(burst=0)
