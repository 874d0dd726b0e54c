"""The pacing of woken provisioning cycles: a wake after a quiet moment acts at once, a flood is paced."""

from __future__ import annotations

import pytest

from cloudpilot.domain.wake_budget import WakeBudget


def test_a_wake_just_after_a_cycle_runs_at_once_then_wakes_are_paced() -> None:
    budget = WakeBudget(now=0.0, pace_seconds=0.5, burst=2)
    budget.spend(0.0)  # the cycle at start-up
    assert budget.delay(0.1) == 0.0  # the lone job submitted right after it does not wait out the pace
    budget.spend(0.1)
    assert budget.delay(0.2) == pytest.approx(0.3)  # two cycles in 0.1 s: the next waits for a token
    # A steady stream of wakes gets one cycle per pace on average.
    now, cycles = 0.2, 0
    while now < 10.2:
        now += budget.delay(now)
        budget.spend(now)
        cycles += 1
        now += 0.01  # the cycle's own time
    assert 19 <= cycles <= 21


def test_a_quiet_second_refills_the_burst_but_no_more() -> None:
    budget = WakeBudget(now=0.0, pace_seconds=0.5, burst=2)
    for t in (0.0, 0.0):
        budget.spend(t)
    assert budget.delay(0.0) == pytest.approx(0.5)
    assert budget.delay(60.0) == 0.0
    budget.spend(60.0)
    budget.spend(60.0)
    assert budget.delay(60.0) == pytest.approx(0.5)  # an hour of quiet is not a burst of thousands


def test_nonsense_pacing_is_refused() -> None:
    with pytest.raises(ValueError, match="pace_seconds"):
        WakeBudget(0.0, pace_seconds=0)
