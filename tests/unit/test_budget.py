"""The restart budget and back-off shared by the supervisor (threads) and the master (workers)."""

from __future__ import annotations

from mailgate.supervise.budget import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    BACKOFF_STRUCTURAL,
    RestartBudget,
)


def test_backoff_doubles_per_restart_in_the_window_up_to_the_maximum() -> None:
    budget = RestartBudget(max_restarts=10, window=60.0)
    waits = []
    for n in range(8):
        assert budget.spend(float(n))
        waits.append(budget.backoff(structural=False))
    assert waits[:3] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
    assert waits[-1] == BACKOFF_MAX


def test_a_structural_failure_waits_longer() -> None:
    budget = RestartBudget(max_restarts=10, window=60.0)
    budget.spend(0.0)
    assert budget.backoff(structural=True) == BACKOFF_STRUCTURAL
    assert budget.backoff(structural=True) > budget.backoff(structural=False)


def test_more_than_max_restarts_within_the_window_spends_the_budget() -> None:
    budget = RestartBudget(max_restarts=2, window=10.0)
    assert budget.spend(0.0) and budget.spend(1.0)
    assert not budget.spend(2.0), "a third restart within 10 s is one too many"
    assert budget.used == 3


def test_restarts_older_than_the_window_are_forgotten() -> None:
    budget = RestartBudget(max_restarts=2, window=10.0, first=0.1)
    assert budget.spend(0.0) and budget.spend(1.0)
    assert budget.spend(20.0), "the first two fell out of the window"
    assert budget.used == 1
    assert budget.backoff(structural=False) == 0.1
