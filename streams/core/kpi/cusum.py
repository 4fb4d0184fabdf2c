"""A Bernoulli CUSUM for small persistent shifts of a proportion (breach policy, DESIGN §5).

The sustained-discordance rule waits for 7 consecutive days above the baseline's upper
bound: it cannot fire in under a week, and a shift of 3 points, the size that matters
for a PE detector whose discordance is about 3 %, keeps some days under the bound and
restarts its count for weeks. A CUSUM accumulates the evidence instead (Page 1954; the
Bernoulli form of Reynolds and Stoumbos, J. Qual. Technol. 1999). Each labelled study
adds the log-likelihood ratio of "shifted" (``p1 = p0 + shift``) against "in control"
(``p0``, the baseline), and the statistic never goes below zero::

    W_t = max(0, W_{t-1} + x_t ln(p1 / p0) + (n_t - x_t) ln((1 - p1) / (1 - p0)))

with ``x_t`` discordant cases of ``n_t`` on day ``t``. The same form watches for a fall
(``p1 = p0 - shift``, e.g. of specificity): then the concordant cases push ``W`` up and
the limit is that of the complementary proportion. It signals when ``W`` reaches the
control limit ``h``; after a signal ``W`` stays at ``h`` (it is not allowed above), so
that when the shift goes away it is below ``h`` again within days.

The control limit comes from the in-control average run length the policy names
(for example 3 years between false alarms): :func:`control_limit` finds the smallest
``h`` whose ARL, computed exactly for the per-study chain (a Markov chain on the
statistic in units of the concordant step, Brook and Evans 1972), reaches it. The
ARL is counted in studies and converted with the baseline's labelled studies per day.
Summing a day's studies before taking ``max(0, .)`` resets the statistic less often
than the per-study chain, so the limit is on the safe side: simulated with 60 studies
a day and a baseline estimated from 60 days, a 3-year ARL gave 0.16 to 0.23 false
alarms a year (``imgov policy simulate`` measures the shipped policy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BernoulliCusum", "average_run_length", "control_limit"]


def average_run_length(p: float, up: int, limit: int) -> float:
    """Returns the average run length (in studies) of an integer Bernoulli CUSUM.

    The chain ``W <- max(0, W + up)`` with probability ``p`` and ``max(0, W - 1)``
    otherwise, from ``W = 0``, signalling when ``W >= limit``. ``L_i`` (the ARL from
    state ``i``) solves ``L_i = 1 + p L_{i+up} + (1 - p) L_{max(0, i-1)}`` with
    ``L_j = 0`` for ``j >= limit``: a banded system, solved by elimination in
    ``O(limit * up)``.
    """
    if not 0.0 < p < 1.0 or up < 1 or limit < 1:
        raise ValueError("need 0 < p < 1, up >= 1 and limit >= 1")
    rows: list[dict[int, float]] = []
    rhs = [1.0] * limit
    for i in range(limit):
        row = {i: 1.0}
        if i + up < limit:
            row[i + up] = -p
        below = max(i - 1, 0)
        row[below] = row.get(below, 0.0) - (1.0 - p)
        rows.append(row)
    for i in range(1, limit):  # only (i, i - 1) lies below the diagonal
        row, pivot_row = rows[i], rows[i - 1]
        factor = row.pop(i - 1, 0.0) / pivot_row[i - 1]
        if factor:
            for col, coef in pivot_row.items():
                if col != i - 1:
                    row[col] = row.get(col, 0.0) - factor * coef
            rhs[i] -= factor * rhs[i - 1]
    arl = [0.0] * limit
    for i in range(limit - 1, -1, -1):
        row = rows[i]
        total = rhs[i] - sum(coef * arl[col] for col, coef in row.items() if col > i)
        arl[i] = total / row[i]
    return arl[0]


def control_limit(p0: float, p1: float, arl0_studies: float) -> float:
    """Returns the smallest limit ``h`` whose in-control ARL is at least ``arl0_studies``.

    The per-study increments ``ln(p1/p0)`` and ``ln((1-p1)/(1-p0))`` are taken in units
    of the second (the concordant step), with the first rounded to a whole number of
    them, as Reynolds and Stoumbos do; ``h`` is a whole number of steps.
    """
    if not 0.0 < p0 < p1 < 1.0:
        raise ValueError(f"need 0 < p0 < p1 < 1, not p0={p0}, p1={p1}")
    step = -math.log((1.0 - p1) / (1.0 - p0))
    up = max(1, round(math.log(p1 / p0) / step))
    low, high = 0, 16
    while average_run_length(p0, up, high) < arl0_studies:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if average_run_length(p0, up, middle) < arl0_studies:
            low = middle
        else:
            high = middle
    return high * step


@dataclass(frozen=True, slots=True)
class BernoulliCusum:
    """The chart of one series: in-control ``p0``, shifted ``p1`` and limit ``h``."""

    p0: float
    p1: float
    h: float

    @classmethod
    def design(
        cls,
        p0: float,
        shift: float,
        arl0_days: float,
        studies_per_day: float,
        *,
        falling: bool = False,
    ) -> BernoulliCusum:
        """Returns the chart detecting ``p0 + shift`` (``p0 - shift`` when ``falling``)
        with an in-control average run length of ``arl0_days``."""
        arl0_studies = arl0_days * studies_per_day
        if falling:
            p1 = max(p0 - shift, 1e-9)
            return cls(p0, p1, control_limit(1.0 - p0, 1.0 - p1, arl0_studies))
        p1 = min(p0 + shift, 1.0 - 1e-9)
        return cls(p0, p1, control_limit(p0, p1, arl0_studies))

    def step(self, statistic: float, events: float, trials: float) -> float:
        """Returns the statistic after a day of ``events`` of ``trials`` (before capping)."""
        up = math.log(self.p1 / self.p0)
        down = math.log((1.0 - self.p1) / (1.0 - self.p0))
        return max(0.0, statistic + events * up + (trials - events) * down)
