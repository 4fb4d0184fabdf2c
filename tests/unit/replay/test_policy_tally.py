"""The policy simulator's numbers, on hand-built breaches: false alarms, delays, quantiles."""

from __future__ import annotations

import itertools

import pytest

from schemas.records import Breach, BreachState, Severity
from schemas.units import DAY_MS
from streams.replay.policy_tally import (
    ALL_RULES,
    DelaySummary,
    FalseAlarms,
    detection_delay_days,
    nearest_rank,
    tally_false_alarms,
)

START = 1_767_225_600_000  # 2026-01-01, day 0
SHIFT = START + 90 * DAY_MS
HORIZON_END = SHIFT + 180 * DAY_MS
_ids = itertools.count()


def breach(
    rule_id: str,
    end_day: float,
    *,
    state: BreachState = BreachState.OPEN,
    site_id: str = "site-01",
    algorithm_name: str = "pe-detect",
    algorithm_version: str = "*",
) -> Breach:
    """A breach whose window (one day long) ends at ``end_day`` days after day 0."""
    end = START + int(end_day * DAY_MS)
    return Breach(
        breach_id=f"b-{next(_ids)}",
        rule_id=rule_id,
        kpi="discordance_rate",
        severity=Severity.CRITICAL,
        state=state,
        window_size="1d",
        window_start_ms=end - DAY_MS,
        window_end_ms=end,
        site_id=site_id,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        finding_code="PE",
        value=0.2,
        threshold=0.1,
        evidence="hand-built",
    )


def delay(breaches: list[Breach], rule_id: str | None = "r") -> float | None:
    return detection_delay_days(
        breaches,
        rule_id,
        site_id="site-01",
        algorithm_name="pe-detect",
        shift_start_ms=SHIFT,
        horizon_end_ms=HORIZON_END,
    )


# -- false alarms ----------------------------------------------------------------------


def test_false_alarms_count_opened_breaches_per_series_year() -> None:
    stable = [
        breach("a", 10),
        breach("a", 12, state=BreachState.RESOLVED),  # the same alarm ending: not another
        breach("a", 200),
        breach("b", 40, site_id="*"),  # a roll-up is an alarm somebody reads, too
        breach("c", 366),  # its window ends after the 365 simulated days
        breach("unknown", 5),  # not a rule of this policy
    ]
    rows = tally_false_alarms(
        ["a", "b", "c"], stable, series_years=4.0, period_end_ms=START + 365 * DAY_MS
    )
    assert rows == [
        FalseAlarms("a", 2, 4.0),
        FalseAlarms("b", 1, 4.0),
        FalseAlarms("c", 0, 4.0),
        FalseAlarms(ALL_RULES, 3, 4.0),
    ]
    assert [row.per_series_year for row in rows] == [0.5, 0.25, 0.0, 0.75]


def test_a_window_ending_with_the_period_counts() -> None:
    rows = tally_false_alarms(
        ["a"], [breach("a", 365)], series_years=1.0, period_end_ms=START + 365 * DAY_MS
    )
    assert rows[0].opened == 1


# -- detection delay ---------------------------------------------------------------------


def test_delay_is_from_the_shift_to_the_end_of_the_first_window_after_it() -> None:
    breaches = [breach("r", 120), breach("r", 104), breach("r", 150)]
    assert delay(breaches) == 14.0


def test_delay_counts_only_the_rule_opened_on_the_shifted_series() -> None:
    breaches = [
        breach("r", 95, state=BreachState.RESOLVED),
        breach("other", 96),
        breach("r", 97, site_id="*"),  # a roll-up over every site: left out
        breach("r", 98, site_id="site-02"),
        breach("r", 99, algorithm_name="ich-detect"),
        breach("r", 100, algorithm_version="1.8.0"),  # the series' own version counts
    ]
    assert delay(breaches) == 10.0
    assert delay(breaches, rule_id=None) == 6.0  # all rules: the first breach of any


def test_a_breach_open_before_the_shift_is_no_detection() -> None:
    assert delay([breach("r", 80)]) is None
    assert delay([breach("r", 90)]) is None  # ends exactly at the shift: before it
    assert delay([breach("r", 80), breach("r", 90.5)]) == 0.5


def test_a_breach_after_the_horizon_is_censored() -> None:
    assert delay([breach("r", 270)]) == 180.0
    assert delay([breach("r", 271)]) is None
    assert delay([]) is None


# -- quantiles -----------------------------------------------------------------------


def test_nearest_rank_takes_the_value_of_rank_ceil_q_n() -> None:
    values = [7.0, 1.0, 5.0, 3.0, 9.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    assert nearest_rank(values, 0.5) == 5.0  # rank 5 of 10
    assert nearest_rank(values, 0.9) == 9.0  # rank 9 (not 10: 0.9 x 10 is exactly 9)
    assert nearest_rank(values, 1.0) == 10.0
    assert nearest_rank([4.0], 0.5) == 4.0
    assert nearest_rank([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 0.5) == 4.0  # rank 4 of 8
    assert nearest_rank([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 0.9) == 8.0  # rank 8 of 8


def test_censored_runs_rank_last() -> None:
    values = [None, 12.0, None, 3.0, 30.0]
    assert nearest_rank(values, 0.5) == 30.0  # rank 3 of 5: 3, 12, 30, >h, >h
    assert nearest_rank(values, 0.9) is None  # rank 5: beyond the horizon
    assert nearest_rank([None, None], 0.5) is None


def test_nearest_rank_refuses_what_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 0.5)
    with pytest.raises(ValueError, match="not in"):
        nearest_rank([1.0], 0.0)


def test_delay_summary_of_twenty_seeds() -> None:
    detected: list[float | None] = [float(d) for d in range(1, 17)]  # 1..16 days
    summary = DelaySummary("r", 3.0, (*detected, None, None, None, None), 180)
    assert summary.detected == 16
    assert summary.median == 10.0  # rank 10 of 20
    assert summary.p90 is None  # rank 18 of 20 is an undetected run: >180
    assert DelaySummary("r", 3.0, (), 180).median is None
