"""Wilson intervals and log-scale duration buckets."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.kpi.stats import (
    DEFAULT_GAMMA,
    LogBuckets,
    nearest_rank,
    quantiles,
    relative_accuracy,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Textbook values (Wilson 1927; Newcombe 1998 table I: 0/10, 5/10, 10/10).
        (0, 10, 0.0, 0.2775328),
        (10, 10, 0.7224672, 1.0),
        (5, 10, 0.2365931, 0.7634069),
        (1, 1, 0.2065493, 1.0),
    ],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-6)


def _score_root(p: float, n: int, lo: float, hi: float) -> float:
    # The Wilson bounds are the roots of (p - x)^2 = z^2 x (1 - x) / n: bisect for them.
    z2 = 1.959963984540054**2
    sign = (p - lo) ** 2 - z2 * lo * (1 - lo) / n > 0
    for _ in range(200):
        mid = (lo + hi) / 2
        if ((p - mid) ** 2 - z2 * mid * (1 - mid) / n > 0) == sign:
            lo = mid
        else:
            hi = mid
    return lo


@given(n=st.integers(1, 5_000), data=st.data())
def test_wilson_bounds_solve_the_score_equation(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    p = k / n
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(_score_root(p, n, 0.0, p) if k else 0.0, abs=1e-9)
    assert high == pytest.approx(_score_root(p, n, p, 1.0) if k < n else 1.0, abs=1e-9)


@given(n=st.integers(1, 10_000), data=st.data())
def test_wilson_contains_the_point_estimate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n + 1e-12
    assert k / n - 1e-12 <= high <= 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 0), (3, 2), (-1, 5)])
def test_wilson_refuses_nonsense(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def _exact(samples: list[int], q: float) -> int:
    """The definition itself: the smallest sample with at least ``q`` of the samples at
    or below it (exact fractions, no rank formula)."""
    share = Fraction(str(q))
    n = len(samples)
    return min(x for x in samples if sum(1 for s in samples if s <= x) >= share * n)


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [(0.9, 2, 2), (0.9, 10, 9), (0.9, 11, 10), (0.5, 2, 1), (0.5, 3, 2), (0.0, 5, 1),
     (1.0, 5, 5), (0.99, 100, 99), (0.9, 1, 1)],
)  # fmt: skip
def test_nearest_rank_by_hand(q: float, n: int, rank: int) -> None:
    assert nearest_rank(q, n) == rank


def test_p90_of_two_turnarounds_is_the_longer_one() -> None:
    buckets = LogBuckets()
    for minutes in (5, 15):
        buckets.add(minutes * 60_000)
    p90 = buckets.quantile(0.9)
    assert p90 is not None and abs(p90 - 15 * 60_000) <= 0.01 * 15 * 60_000


durations = st.one_of(
    st.integers(1, 10**10),
    st.integers(-(10**7), 10**7),
    st.sampled_from([0, 1, 2, -1, 1000]),
)


@given(samples=st.lists(durations, min_size=1, max_size=300))
def test_quantiles_within_one_percent_of_exact(samples: list[int]) -> None:
    buckets = LogBuckets()
    for d in samples:
        buckets.add(d)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        exact = _exact(samples, q)
        got = buckets.quantile(q)
        assert got is not None
        assert abs(got - exact) <= 0.01 * abs(exact), (q, exact, got)


@given(
    kept=st.lists(durations, min_size=1, max_size=100),
    retracted=st.lists(durations, max_size=100),
)
def test_add_then_remove_equals_never_added(kept: list[int], retracted: list[int]) -> None:
    plain, churned = LogBuckets(), LogBuckets()
    for d in kept:
        plain.add(d)
        churned.add(d)
    for d in retracted:
        churned.add(d)
    for d in reversed(retracted):
        assert churned.remove(d)
    assert churned.counts == plain.counts


@given(a=st.lists(durations, max_size=50), b=st.lists(durations, max_size=50))
def test_merge_equals_adding_everything(a: list[int], b: list[int]) -> None:
    left, right, both = LogBuckets(), LogBuckets(), LogBuckets()
    for d in a:
        left.add(d)
        both.add(d)
    for d in b:
        right.add(d)
        both.add(d)
    left.merge(right)
    assert left.counts == both.counts
    assert left.total == len(a) + len(b)


def test_remove_never_goes_negative() -> None:
    buckets = LogBuckets()
    buckets.add(100)
    assert not buckets.remove(5000)
    assert buckets.remove(100)
    assert not buckets.remove(100)
    assert buckets.counts == {}
    assert buckets.quantile(0.5) is None


def test_zero_and_negative_durations_sort_correctly() -> None:
    buckets = LogBuckets()
    for d in (-500, 0, 0, 700):
        buckets.add(d)
    assert buckets.quantile(0.0) == pytest.approx(-500, rel=0.01)
    assert buckets.quantile(0.5) == 0.0
    assert buckets.quantile(1.0) == pytest.approx(700, rel=0.01)


def test_default_accuracy_is_below_one_percent() -> None:
    assert relative_accuracy(DEFAULT_GAMMA) < 0.01
    assert quantiles({}, (0.5,), DEFAULT_GAMMA) is None
    with pytest.raises(ValueError):
        LogBuckets(1.0)
    with pytest.raises(ValueError):
        LogBuckets().merge(LogBuckets(1.05))
