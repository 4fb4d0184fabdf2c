"""What the policy simulator counts: false alarms, detection delays, their quantiles.

Pure functions over the breaches of simulated runs (``streams.replay.policy_sim``
produces them), so every number of ``imgov policy simulate`` can be checked against
hand-built ``Breach`` records:

- **false alarms per model-site-year** of a rule: the breaches of that rule OPENED on
  stable streams (no shift), divided by the exposure, (site, algorithm) series x
  simulated years. Every OPEN counts, whatever its scope: each is an alert somebody
  must look at. Only windows that end inside the simulated period count: the windows
  that end after the input (made final by the end of input) hold a part of a window of
  data, which a live stream never judges. ``ALL_RULES`` sums every rule.
- **detection delay** of a rule on a shifted stream: the end of the window that opened
  the rule's first breach on the shifted series (its site and algorithm, any version:
  roll-ups over every site are left out) among the windows ending after the shift
  started, minus the shift start, in days. A breach opened before the shift and still
  open is no detection: the rule must resolve and open again (hysteresis). A run
  whose first such window ends after the horizon, or never, is *censored*: not
  detected within the horizon (``None``). ``ALL_RULES`` is the first breach of any rule.
- **median and p90** over seeds by *nearest rank*, as the KPI durations: the q-quantile
  of n delays is the delay of rank ⌈q·n⌉ in ascending order, censored runs ranked last
  (they are longer than the horizon). When that rank falls on a censored run the
  quantile is only known to exceed the horizon (``None``; shown as ``>180``). The
  median of 8 runs is the 4th delay, the p90 the 8th; of 20 runs the 10th and the 18th.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.records import Breach, BreachState
from schemas.units import DAY_MS
from streams.core.kpi import stats

__all__ = [
    "ALL_RULES",
    "DelaySummary",
    "FalseAlarms",
    "detection_delay_days",
    "nearest_rank",
    "tally_false_alarms",
]

ALL_RULES = "all rules"
"""The row of every rule together: false alarms summed, delays to the first breach."""


@dataclass(frozen=True, slots=True)
class FalseAlarms:
    """Breaches one rule (or ``ALL_RULES``) opened on stable streams.

    Attributes:
        rule_id: the rule, or ``ALL_RULES``.
        opened: OPEN breaches counted.
        series_years: the exposure, (site, algorithm) series x simulated years.
    """

    rule_id: str
    opened: int
    series_years: float

    @property
    def per_series_year(self) -> float:
        """Opened breaches per model-site-year (NaN without exposure)."""
        return self.opened / self.series_years if self.series_years > 0 else math.nan


@dataclass(frozen=True, slots=True)
class DelaySummary:
    """Detection delays of one rule (or ``ALL_RULES``) over the seeds of one shift.

    Attributes:
        rule_id: the rule, or ``ALL_RULES``.
        shift_points: the specificity lost, in percentage points.
        delays: per seed, in days; None: not detected within the horizon.
        horizon_days: how long after the shift the runs went on.
    """

    rule_id: str
    shift_points: float
    delays: tuple[float | None, ...]
    horizon_days: float

    @property
    def detected(self) -> int:
        """Runs that detected the shift within the horizon."""
        return sum(1 for delay in self.delays if delay is not None)

    @property
    def median(self) -> float | None:
        """Nearest-rank median in days; None: beyond the horizon (or no runs)."""
        return nearest_rank(self.delays, 0.5) if self.delays else None

    @property
    def p90(self) -> float | None:
        """Nearest-rank 90th percentile in days; None: beyond the horizon (or no runs)."""
        return nearest_rank(self.delays, 0.9) if self.delays else None


def tally_false_alarms(
    rule_ids: Sequence[str], breaches: Iterable[Breach], *, series_years: float, period_end_ms: int
) -> list[FalseAlarms]:
    """Counts the OPEN breaches of stable runs per rule, then ``ALL_RULES``.

    Args:
        rule_ids: the policy's rules, in the order of the rows returned.
        breaches: every breach of the stable runs (RESOLVED ones are skipped).
        series_years: the exposure of those runs.
        period_end_ms: the end of the simulated period; breaches opened by a window
            ending after it are not counted (see the module docstring).

    Returns:
        One row per rule in ``rule_ids`` order, then the ``ALL_RULES`` row. Breaches of
        rules not in ``rule_ids`` count in no row.
    """
    opened = dict.fromkeys(rule_ids, 0)
    for breach in breaches:
        if (
            breach.state is BreachState.OPEN
            and breach.rule_id in opened
            and breach.window_end_ms <= period_end_ms
        ):
            opened[breach.rule_id] += 1
    rows = [FalseAlarms(rule_id, count, series_years) for rule_id, count in opened.items()]
    rows.append(FalseAlarms(ALL_RULES, sum(opened.values()), series_years))
    return rows


def detection_delay_days(
    breaches: Iterable[Breach],
    rule_id: str | None,
    *,
    site_id: str,
    algorithm_name: str,
    shift_start_ms: int,
    horizon_end_ms: int,
) -> float | None:
    """Returns the days from the shift to the first breach that detected it, or None.

    Args:
        breaches: the breaches of one shifted run.
        rule_id: the rule whose delay is wanted; None: the first breach of any rule.
        site_id, algorithm_name: the shifted series (any algorithm version).
        shift_start_ms: when the shift started.
        horizon_end_ms: windows ending after this do not count (the run's end).

    Returns:
        ``(window_end_ms - shift_start_ms) / DAY_MS`` of the earliest-ending window
        that opened such a breach after the shift started, None when none did.
    """
    ends = [
        b.window_end_ms
        for b in breaches
        if b.state is BreachState.OPEN
        and (rule_id is None or b.rule_id == rule_id)
        and b.site_id == site_id
        and b.algorithm_name == algorithm_name
        and shift_start_ms < b.window_end_ms <= horizon_end_ms
    ]
    return (min(ends) - shift_start_ms) / DAY_MS if ends else None


def nearest_rank(values: Sequence[float | None], q: float) -> float | None:
    """Returns the q-quantile of ``values`` by nearest rank, None values ranked last.

    The quantile is the value of rank ⌈q·n⌉ (1-based) in ascending order; None marks
    a censored value (larger than any other): when the rank falls on one, the
    quantile is None (it is only known to be larger than every observed value).

    Raises:
        ValueError: ``values`` is empty or ``q`` is not in (0, 1].
    """
    if not values:
        raise ValueError("the quantile of no values is undefined")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile {q} is not in (0, 1]")
    observed = sorted(v for v in values if v is not None)
    rank = stats.nearest_rank(q, len(values))  # the KPI percentiles' definition
    return observed[rank - 1] if rank <= len(observed) else None
