"""The Bernoulli CUSUM's run lengths and control limit, against exact and simulated ARLs."""

from __future__ import annotations

import math
import random

import pytest

from streams.core.kpi.cusum import BernoulliCusum, average_run_length, control_limit


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_run_lengths_of_small_chains_by_hand(p: float) -> None:
    # Limit 1: the first success signals, a geometric run length.
    assert average_run_length(p, 1, 1) == pytest.approx(1 / p)
    # Limit 2, step 1: two successes in a row (a failure at 1 falls back to 0).
    assert average_run_length(p, 1, 2) == pytest.approx((1 + p) / p**2)
    # Step 2 reaches limit 2 at once: geometric again.
    assert average_run_length(p, 2, 2) == pytest.approx(1 / p)


def _simulated_run_length(p: float, up: int, limit: int, rng: random.Random) -> int:
    state = studies = 0
    while state < limit:
        studies += 1
        state = state + up if rng.random() < p else max(0, state - 1)
    return studies


def test_the_exact_run_length_matches_simulation() -> None:
    rng = random.Random(20261207)
    p, up, limit = 0.05, 12, 60
    runs = [_simulated_run_length(p, up, limit, rng) for _ in range(3000)]
    mean = sum(runs) / len(runs)
    exact = average_run_length(p, up, limit)
    # Run lengths are roughly geometric: standard error about mean / sqrt(3000).
    assert abs(mean - exact) < 4 * exact / math.sqrt(len(runs)), (mean, exact)


def test_the_control_limit_is_the_smallest_reaching_the_target() -> None:
    p0, p1, target = 0.03, 0.06, 3 * 365 * 60
    h = control_limit(p0, p1, target)
    step = -math.log((1 - p1) / (1 - p0))
    up = round(math.log(p1 / p0) / step)
    steps = round(h / step)
    assert steps * step == pytest.approx(h)
    assert average_run_length(p0, up, steps) >= target > average_run_length(p0, up, steps - 1)
    # A longer in-control run length needs a higher limit.
    assert control_limit(p0, p1, 10 * target) > h


def test_the_chart_steps_by_the_log_likelihood_ratio_and_never_goes_below_zero() -> None:
    chart = BernoulliCusum(p0=0.03, p1=0.06, h=6.0)
    up, down = math.log(2.0), math.log(0.94 / 0.97)
    assert chart.step(1.0, 4, 50) == pytest.approx(1.0 + 4 * up + 46 * down)
    assert chart.step(0.5, 0, 50) == 0.0
    with pytest.raises(ValueError, match="p0 < p1"):
        control_limit(0.06, 0.03, 1000)


def test_a_falling_chart_is_the_rising_chart_of_the_complement() -> None:
    # Specificity 0.98 falling by 3 points is the false-positive share rising 0.02 -> 0.05.
    falling = BernoulliCusum.design(0.98, 0.03, 1095, 50.0, falling=True)
    rising = BernoulliCusum.design(0.02, 0.03, 1095, 50.0)
    assert (falling.p0, falling.p1) == (0.98, pytest.approx(0.95))
    assert falling.h == pytest.approx(rising.h)
    # 45 true negatives of 50 (5 false positives) move both charts alike.
    assert falling.step(1.0, 45, 50) == pytest.approx(rising.step(1.0, 5, 50))
