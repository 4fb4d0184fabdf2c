"""Small statistics for KPI values: Wilson intervals, log-scale duration buckets, chi-square tails.

Both are mergeable and exact under retraction, which is what lets the aggregator keep
per-pane state, subtract a lineage revision it has superseded and merge panes into
windows of any length (DESIGN §5).

Duration buckets follow the DDSketch construction (Masson et al., VLDB 2019): a positive
duration ``d`` goes to bucket ``k = ceil(log_gamma(d))``, i.e. ``(gamma^(k-1), gamma^k]``,
whose representative ``2 gamma^k / (gamma + 1)`` is within ``(gamma - 1) / (gamma + 1)``
of every value in it: 0.99 % for the default ``gamma = 1.02``. A quantile returns the
representative of the bucket holding the sample of that rank (nearest rank, see
``quantiles``), so it is within that relative error of the exact sample quantile.
Counts live in a plain ``dict`` from bucket key to count, so adding, removing and
merging are dictionary updates.

Durations are integer milliseconds. Zero and negative durations (clock skew between
systems, kept visible by the join) get buckets of their own: key 0 holds exact zeros,
and a negative duration ``-d`` gets the mirror image ``-key(d)`` of the positive key, so
keys sort in the same order as the durations they stand for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import TypeAlias

__all__ = [
    "DEFAULT_GAMMA",
    "Z95",
    "Counts",
    "LogBuckets",
    "add_counts",
    "bucket_key",
    "bucket_value",
    "chi2_sf",
    "merge_counts",
    "nearest_rank",
    "quantiles",
    "relative_accuracy",
    "subtract_counts",
    "wilson_interval",
]

Z95 = 1.959963984540054
"""The two-sided 95 % standard normal quantile."""

DEFAULT_GAMMA = 1.02
"""Bucket growth factor: 0.99 % relative error at the bucket's representative."""

Counts: TypeAlias = list[int] | dict[int, int]
"""Mergeable counts: positional (numerator/denominator, histogram bins) or bucket -> count."""


def wilson_interval(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """Returns the Wilson score interval of a proportion (95 % by default).

    Called for every proportion KPI value. Unlike the normal approximation it stays
    inside [0, 1] and behaves at 0 and at ``trials`` successes.

    Args:
        successes: the numerator, ``0 <= successes <= trials``.
        trials: the denominator, positive.
        z: the standard normal quantile of the interval.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: if ``trials`` is not positive or ``successes`` is out of range.
    """
    if trials <= 0:
        raise ValueError(f"a Wilson interval needs trials > 0, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside [0, {trials}]")
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2.0 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def chi2_sf(x: float, df: int) -> float:
    """Returns ``P(X >= x)`` for a chi-square variable ``X`` with ``df`` degrees of freedom.

    Exact for integer degrees of freedom, by the closed forms of the regularised upper
    incomplete gamma function: a Poisson sum for even ``df``; ``erfc`` plus a finite
    series for odd ``df``. No table and no SciPy: ``chi2_sf(3.841, 1)`` is 0.0500.
    """
    if df < 1:
        raise ValueError(f"a chi-square distribution needs df >= 1, not {df}")
    if x <= 0.0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        term = total = math.exp(-half)
        for i in range(1, df // 2):
            term *= half / i
            total += term
    else:
        total = math.erfc(math.sqrt(half))
        term = math.exp(-half) / math.sqrt(math.pi * half)
        for i in range(1, (df + 1) // 2):
            term *= half / (i - 0.5)
            total += term
    return min(1.0, total)


def relative_accuracy(gamma: float) -> float:
    """Returns the worst relative error of a bucket's representative value."""
    return (gamma - 1.0) / (gamma + 1.0)


def bucket_key(duration_ms: int, inv_ln_gamma: float) -> int:
    """Returns the bucket key of an integer duration.

    Args:
        duration_ms: the duration; zero and negative durations are allowed.
        inv_ln_gamma: ``1 / ln(gamma)``, precomputed by the caller (hot path).
    """
    if duration_ms > 0:
        return math.ceil(math.log(duration_ms) * inv_ln_gamma) + 1
    if duration_ms == 0:
        return 0
    return -(math.ceil(math.log(-duration_ms) * inv_ln_gamma) + 1)


def bucket_value(key: int, gamma: float) -> float:
    """Returns the representative duration of a bucket key (the inverse of ``bucket_key``)."""
    if key == 0:
        return 0.0
    magnitude = 2.0 * gamma ** (abs(key) - 1) / (gamma + 1.0)
    return magnitude if key > 0 else -magnitude


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank of the ``q`` quantile of ``n`` samples: ``max(1, ceil(q * n))``.

    Computed on the fraction ``q`` stands for (0.9 is 9/10), so that ``0.9 * 10`` is the
    rank 9 it means, not the 10 its binary rounding would give.
    """
    numerator, denominator = _quantile_fraction(q)
    return max(1, -(-numerator * n // denominator))


@functools.lru_cache(maxsize=64)
def _quantile_fraction(q: float) -> tuple[int, int]:
    """``q`` as the fraction it stands for (0.9 is 9/10); a handful of quantiles are asked
    for over and over, so each is worked out once."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    fraction = Fraction(q).limit_denominator(1_000_000)
    return fraction.numerator, fraction.denominator


def quantiles(
    counts: Mapping[int, int], qs: Iterable[float], gamma: float
) -> tuple[float, ...] | None:
    """Returns quantiles of bucketed durations, or None when there is no sample.

    The quantile ``q`` of ``n`` samples is by *nearest rank*: the smallest sample such
    that at least ``q`` of the samples are at or below it, the sample of 1-based rank
    ``max(1, ceil(q * n))``, given as its bucket's representative (within the relative
    accuracy). So a p90 of two samples is the larger one: 90% of them are at or below
    it, as a p90 turnaround promises.

    Args:
        counts: bucket key -> number of samples (not negative).
        qs: quantiles in ``[0, 1]``, any order.
        gamma: the bucket growth factor the keys were made with.
    """
    total = sum(counts.values())
    if total <= 0:
        return None
    # One pass over the sorted keys for all quantiles, lowest rank first.
    wanted = sorted((nearest_rank(q, total) - 1, i) for i, q in enumerate(qs))
    out = [0.0] * len(wanted)
    w = 0
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        while w < len(wanted) and seen > wanted[w][0]:
            out[wanted[w][1]] = bucket_value(key, gamma)
            w += 1
        if w == len(wanted):
            break
    return tuple(out)


class LogBuckets:
    """A mergeable, retractable histogram of durations on log-scale buckets.

    The aggregator works on bare ``dict`` counts with ``bucket_key`` for speed; this
    class is the same structure with a small API for everything else.

    Args:
        gamma: bucket growth factor (> 1); the relative error is ``relative_accuracy``.
    """

    __slots__ = ("_inv_ln_gamma", "counts", "gamma")

    def __init__(self, gamma: float = DEFAULT_GAMMA) -> None:
        if gamma <= 1.0:
            raise ValueError(f"gamma must be > 1, got {gamma}")
        self.gamma = gamma
        self._inv_ln_gamma = 1.0 / math.log(gamma)
        self.counts: dict[int, int] = {}

    def key(self, duration_ms: int) -> int:
        """Returns the bucket key of a duration."""
        return bucket_key(duration_ms, self._inv_ln_gamma)

    def add(self, duration_ms: int, count: int = 1) -> None:
        """Adds ``count`` samples of a duration."""
        key = self.key(duration_ms)
        self.counts[key] = self.counts.get(key, 0) + count

    def remove(self, duration_ms: int, count: int = 1) -> bool:
        """Retracts samples added before; returns False (and changes nothing) otherwise.

        A bucket count never goes negative: retracting more than was added is refused.
        """
        key = self.key(duration_ms)
        have = self.counts.get(key, 0)
        if have < count:
            return False
        if have == count:
            del self.counts[key]
        else:
            self.counts[key] = have - count
        return True

    def merge(self, other: LogBuckets) -> None:
        """Adds every sample of ``other`` (made with the same gamma) to this histogram.

        Raises:
            ValueError: if the two histograms use different gammas.
        """
        if other.gamma != self.gamma:
            raise ValueError("cannot merge buckets of different gammas")
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count

    @property
    def total(self) -> int:
        """The number of samples."""
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """Returns the approximate ``q`` quantile, None when empty (see ``quantiles``)."""
        result = quantiles(self.counts, (q,), self.gamma)
        return None if result is None else result[0]


def merge_counts(
    parts: Iterable[Counts | None], empty: Callable[[], Counts], *, owned: bool = False
) -> Counts:
    """Returns the sum of counts (None = nothing).

    Args:
        parts: counts of one shape (all lists of one length, or all dicts).
        empty: makes the result when every part is empty.
        owned: whether the caller may change the result; when False it may be one of
            the parts itself (no copy), to be read only.
    """
    out: Counts | None = None
    copied = False
    for part in parts:
        if part:
            if out is None:
                out = part
            else:
                if not copied:
                    out, copied = out.copy(), True
                add_counts(out, (part,))
    if out is None:
        return empty()
    return out.copy() if owned and not copied else out


def add_counts(total: Counts, parts: Iterable[Counts | None]) -> None:
    """Adds counts of the same shape to ``total`` in place."""
    for part in parts:
        if not part:
            continue
        if isinstance(total, dict):
            assert isinstance(part, dict)
            for key, count in part.items():
                total[key] = total.get(key, 0) + count
        else:
            assert isinstance(part, list)
            for i, count in enumerate(part):
                total[i] += count


def subtract_counts(total: Counts, parts: Iterable[Counts | None]) -> None:
    """Subtracts counts that ``total`` contains, in place (dict entries reaching 0 go)."""
    for part in parts:
        if not part:
            continue
        if isinstance(total, dict):
            assert isinstance(part, dict)
            for key, count in part.items():
                left = total.get(key, 0) - count
                if left:
                    total[key] = left
                else:
                    total.pop(key, None)
        else:
            assert isinstance(part, list)
            for i, count in enumerate(part):
                total[i] -= count
