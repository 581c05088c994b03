"""The connector stall watch, with explicit clock values (no sleeping)."""

from mailgate.supervise.watch import ConnectorWatch, Load

DUE, NONE = Load(3, 50.0), Load(0, 0.0)


def run(watch: ConnectorWatch, now: float, load: Load, done: float = 0.0, paused: bool = False):  # type: ignore[no-untyped-def]
    return [(r.stalled, round(r.seconds)) for r in
            watch.check(now, {"c": load}, {"c": done}, {"c"} if paused else set())]  # fmt: skip


def test_due_work_without_completion_stalls_repeats_then_recovers() -> None:
    watch = ConnectorWatch(stall_after=10)
    assert run(watch, 100, DUE) == []
    assert run(watch, 105, DUE) == []
    assert run(watch, 111, DUE) == [(True, 11)]
    assert run(watch, 115, DUE) == [], "not repeated before another interval"
    assert run(watch, 121, DUE) == [(True, 21)]
    assert watch.stalled() == ["c"]
    assert run(watch, 125, DUE, done=124) == [(False, 25)]
    assert watch.stalled() == []


def test_short_gaps_between_retries_do_not_reset_the_clock() -> None:
    watch = ConnectorWatch(stall_after=10)
    run(watch, 100, DUE)
    run(watch, 104, NONE)  # deferred for a moment
    run(watch, 106, DUE)
    assert run(watch, 111, DUE) == [(True, 11)]


def test_a_long_empty_spell_and_a_pause_clear_it() -> None:
    watch = ConnectorWatch(stall_after=10)
    run(watch, 100, DUE)
    assert run(watch, 111, DUE)[0][0]
    run(watch, 112, NONE)
    assert run(watch, 123, NONE) == [(False, 23)], "stalled since 100"
    run(watch, 130, DUE)
    assert run(watch, 141, DUE)[0][0]
    assert run(watch, 142, DUE, paused=True) == [(False, 12)]
    assert run(watch, 200, DUE, paused=True) == [], "a paused connector never stalls"


def test_recent_delivery_and_fresh_work_do_not_stall() -> None:
    watch = ConnectorWatch(stall_after=10)
    assert run(watch, 100, DUE, done=95) == []
    assert run(watch, 108, DUE, done=105) == []
    assert run(watch, 114, DUE, done=105) == []
    assert run(watch, 116, DUE, done=105) == [], "work seen due again at 108"
    assert run(watch, 119, DUE, done=105) == [(True, 11)]


def test_no_stall_is_reported_with_nothing_due() -> None:
    """Issue point 9: right after stalled threads released their work and it was deferred
    again, nothing is due; the clock keeps running but no warning says "0 recipient(s) due"."""
    watch = ConnectorWatch(stall_after=10)
    run(watch, 100, DUE)
    run(watch, 108, NONE)  # the stalled thread's recipients deferred for a long backoff
    assert run(watch, 111, NONE) == []
    assert run(watch, 115, NONE) == []
    assert watch.stalled() == []
    assert run(watch, 116, DUE) == [(True, 16)], "due again, still no completion: a stall"
