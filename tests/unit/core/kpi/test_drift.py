"""Score drift: bins, PSI, its chi-square test, the per-series reference and the KPI."""

from __future__ import annotations

import math
import random

import pytest

from schemas.events import InferenceResult, InferenceStatus
from schemas.records import Completeness, LineageRecord, Outcome
from schemas.units import DAY_MS, MINUTE_MS
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.drift import (
    ScoreReference,
    homogeneity_test,
    population_stability_index,
    score_bin,
)
from streams.core.kpi.stats import chi2_sf
from tests.unit.core.kpi.test_batch import feed

START = 1_735_689_600_000


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, 0), (0.0999, 0), (0.1, 1), (0.55, 5), (0.9, 9), (1.0, 9), (-0.5, 0), (1.5, 9)],
)
def test_score_bins(score: float, expected: int) -> None:
    assert score_bin(score) == expected


def test_nan_scores_have_no_bin() -> None:
    assert score_bin(math.nan) is None


def test_psi_of_identical_distributions_is_zero() -> None:
    bins = [5, 10, 20, 30, 20, 10, 3, 1, 1, 0]
    assert population_stability_index(bins, bins) == 0.0
    assert population_stability_index([2 * b for b in bins], bins) == pytest.approx(0.0)


def test_psi_of_samples_of_one_distribution_is_small_and_of_a_shift_large() -> None:
    rng = random.Random(1)

    def histogram(shift: float) -> list[int]:
        bins = [0] * 10
        for _ in range(20_000):
            b = score_bin(min(1.0, max(0.0, rng.betavariate(2, 5) + shift)))
            assert b is not None
            bins[b] += 1
        return bins

    reference = histogram(0.0)
    same = population_stability_index(histogram(0.0), reference)
    shifted = population_stability_index(histogram(0.25), reference)
    assert same is not None and same < 0.01
    assert shifted is not None and shifted > 0.25


def test_psi_with_empty_bins_is_finite_and_empty_inputs_give_none() -> None:
    got = population_stability_index([10, 0, 0], [0, 0, 10], epsilon=1e-4)
    assert got is not None and math.isfinite(got) and got > 1
    assert population_stability_index([0, 0], [1, 1]) is None
    assert population_stability_index([1, 1], [0, 0]) is None


def test_reference_follows_the_first_day_seen() -> None:
    ref = ScoreReference(2 * DAY_MS)
    assert ref.update(0, 5 * DAY_MS, 3, 1)
    assert ref.update(0, 6 * DAY_MS, 3, 1)
    assert not ref.update(0, 7 * DAY_MS, 3, 1)  # after the reference period
    assert ref.reference([0]) == (7 * DAY_MS, [0, 0, 0, 2, 0, 0, 0, 0, 0, 0])
    assert ref.update(0, 4 * DAY_MS, 1, 1)  # an earlier first day: day 6 leaves the reference
    assert ref.reference([0]) == (6 * DAY_MS, [0, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    assert not ref.update(0, 4 * DAY_MS, 9, -1)  # never added: refused
    assert ref.update(0, 4 * DAY_MS, 1, -1)
    assert ref.first_day(0) == 4 * DAY_MS  # retraction does not move the first day
    assert ref.reference([1]) is None
    with pytest.raises(ValueError):
        ScoreReference(DAY_MS + 1)


def _inference(uid: str, t: int, score: float) -> LineageRecord:
    return LineageRecord(
        site_id="S1",
        study_uid=uid,
        algorithm_name="pe-detect",
        finding_code="PE",
        algorithm_version="1.0",
        inference_status=InferenceStatus.SUCCEEDED,
        ai_result=InferenceResult.POSITIVE if score >= 0.5 else InferenceResult.NEGATIVE,
        score=score,
        study_available_at_ms=t - MINUTE_MS,
        inference_completed_at_ms=t,
        outcome=Outcome.AWAITING_REPORT,
        completeness=Completeness.OPEN,
        revision=1,
        updated_at_ms=t,
        record_hash=uid,
    )


def test_score_psi_kpi_after_the_reference_period() -> None:
    """7 reference days, 7 similar days, then 7 days of shifted scores."""
    rng = random.Random(2)
    aggregator = KpiAggregator(KpiConfig(psi_reference_ms=7 * DAY_MS, emit_interval_ms=None))
    values = []
    for day in range(21):
        shift = 0.3 if day >= 14 else 0.0
        for i in range(300):
            t = START + day * DAY_MS + i * 280_000
            score = min(1.0, max(0.0, rng.betavariate(2, 5) + shift))
            values += feed(aggregator, None, _inference(f"{day}-{i}", t, score))
    values += aggregator.close_all()
    psi = {
        (v.window_start_ms - START) // DAY_MS: v
        for v in values
        if v.kpi == "score_psi"
        and v.window_size == "1d"
        and v.site_id == "S1"
        and v.algorithm_version == "1.0"
    }
    assert sorted(psi) == list(range(7, 21))  # none inside the reference period
    assert all(psi[d].value < 0.1 for d in range(7, 14))
    assert all(psi[d].value > 0.25 for d in range(14, 21))
    assert all(v.denominator == 300 for v in psi.values())
    assert all(psi[d].p_value is not None and psi[d].p_value > 1e-3 for d in range(7, 14))
    assert all(psi[d].p_value is not None and psi[d].p_value < 1e-9 for d in range(14, 21))
    assert {v.p_value for v in values if v.kpi != "score_psi"} == {None}
    weekly = [v for v in values if v.kpi == "score_psi" and v.window_size == "7d"]
    assert weekly and min(v.window_start_ms for v in weekly) == START + 7 * DAY_MS


@pytest.mark.parametrize(
    ("x", "df", "p"),
    # Table values (the 5 % and 0.1 % critical values) and the two closed forms' edges.
    [
        (3.841459, 1, 0.05),
        (5.991465, 2, 0.05),
        (16.918978, 9, 0.05),
        (18.307038, 10, 0.05),
        (27.877165, 9, 0.001),
        (10.827566, 1, 0.001),
        (0.0, 3, 1.0),
        (2.0, 2, math.exp(-1.0)),
    ],
)
def test_chi_square_tail_against_tables(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-5)


def test_homogeneity_test_by_hand() -> None:
    # 2 x 2: expected 25 / 25 and 15 / 15; (5^2 / 25) * 2 + (5^2 / 15) * 2 = 16 / 3.
    test = homogeneity_test([30, 10], [20, 20])
    assert test is not None
    assert (test.statistic, test.df) == (pytest.approx(16 / 3), 1)
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(8 / 3)))
    # Sparse bins merge until the pooled count reaches 5 * 200 / 100 = 10: bins 0-3 are one
    # group (51 / 49), bin 4 another (49 / 51); expected 50 in every cell: 4 * 1 / 50.
    merged = homogeneity_test([1, 0, 0, 50, 49], [2, 1, 0, 46, 51])
    assert merged is not None
    assert (merged.statistic, merged.df) == (pytest.approx(4 / 50), 1)
    # A remainder short of a group joins the last one; one group is no test.
    assert homogeneity_test([50, 1], [50, 2]) is None
    assert homogeneity_test([0, 0], [5, 5]) is None


def test_homogeneity_p_values_of_a_stable_model_are_uniform() -> None:
    """Windows of 140 scores against 280, the demo's sizes: PSI > 0.25 is common, p is not."""
    rng = random.Random(7)

    def histogram(n: int) -> list[int]:
        bins = [0] * 10
        for _ in range(n):
            bins[min(int(rng.betavariate(2, 5) * 10), 9)] += 1
        return bins

    p_values, large_psi = [], 0
    for _ in range(2000):
        window, reference = histogram(140), histogram(280)
        test = homogeneity_test(window, reference)
        assert test is not None
        p_values.append(test.p_value)
        large_psi += (population_stability_index(window, reference) or 0.0) > 0.25
    below = sum(p < 0.05 for p in p_values) / len(p_values)
    assert 0.035 < below < 0.065  # 5 % +- 3 standard errors
    assert sum(p < 0.001 for p in p_values) <= 6  # expected 2
    assert large_psi > 6
