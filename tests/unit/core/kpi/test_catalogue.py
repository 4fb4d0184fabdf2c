"""The KPI catalogue and the contribution of one lineage record."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from schemas.events import InferenceResult, InferenceStatus
from schemas.records import Completeness, LineageRecord, Outcome
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.core.kpi.catalogue import (
    KPI_BY_NAME,
    KPIS,
    NO_VERSION,
    ContributionBuilder,
    KpiKind,
    summarise_counts,
    summarise_durations,
)
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.stats import LogBuckets

T = 1_735_689_600_000
BUILD = ContributionBuilder(KpiConfig())


def rec(**fields: Any) -> LineageRecord:
    base: dict[str, Any] = {
        "site_id": "S1",
        "study_uid": "u",
        "algorithm_name": "ich",
        "finding_code": "ICH",
        "algorithm_version": "1.0",
        "outcome": Outcome.AWAITING_REPORT,
        "completeness": Completeness.OPEN,
        "revision": 1,
        "updated_at_ms": T,
        "record_hash": "h",
    }
    base.update(fields)
    return LineageRecord(**base)


def slots(record: LineageRecord) -> dict[str, tuple[int, int, int]]:
    _, items = BUILD(record)
    return {KPIS[i].name: item for i, item in items.items()}


def test_catalogue_has_every_kpi_of_the_design_table() -> None:
    assert set(KPI_BY_NAME) == {
        "coverage", "inference_failure_rate", "time_to_result", "ai_positive_rate",
        "alert_ppv", "sensitivity", "specificity", "discordance_rate", "review_candidates",
        "alert_response_rate", "time_to_response", "dismiss_rate", "escalation_rate",
        "report_tat_ai_positive", "report_tat_ai_negative", "addendum_rate",
        "addendum_rate_concordant", "addendum_rate_discordant", "score_psi",
    }  # fmt: skip
    assert KPI_BY_NAME["ai_positive_rate"].scale == 100.0
    assert not KPI_BY_NAME["coverage"].versioned
    assert "1h" not in KPI_BY_NAME["score_psi"].window_sizes


def test_a_record_without_event_times_contributes_nothing() -> None:
    assert slots(rec()) == {}
    dims, _ = BUILD(rec(algorithm_version=None))
    assert dims == ("S1", "ich", NO_VERSION, "ICH")


def test_inference_contributions_and_time_fallback() -> None:
    ok = rec(
        inference_status=InferenceStatus.SUCCEEDED,
        ai_result=InferenceResult.POSITIVE,
        score=0.42,
        study_available_at_ms=T,
        inference_completed_at_ms=T + 5000,
        time_to_result_ms=5000,
    )
    got = slots(ok)
    assert got["inference_failure_rate"] == (T + 5000, 0, 1)
    assert got["ai_positive_rate"] == (T + 5000, 1, 1)
    assert got["score_psi"] == (T + 5000, 4, 1)
    assert got["time_to_result"][0] == T + 5000
    failed = slots(rec(inference_status=InferenceStatus.TIMED_OUT, study_available_at_ms=T))
    assert failed == {"inference_failure_rate": (T, 1, 1)}  # no completion: study available


def test_alert_contributions_and_the_sla_boundary() -> None:
    raised = {"alert_raised_at_ms": T}
    assert slots(rec(**raised)) == {
        "alert_response_rate": (T, 0, 1),
        "escalation_rate": (T, 0, 1),
    }
    on_time = slots(rec(**raised, time_to_response_ms=15 * MINUTE_MS, alert_dismissed=True))
    assert on_time["alert_response_rate"] == (T, 1, 1)
    assert on_time["dismiss_rate"] == (T, 1, 1)
    late = slots(rec(**raised, time_to_response_ms=15 * MINUTE_MS + 1, alert_escalated=True))
    assert late["alert_response_rate"] == (T, 0, 1)
    assert late["escalation_rate"] == (T, 1, 1)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome.TRUE_POSITIVE, {"alert_ppv": 1, "sensitivity": 1, "discordance_rate": 0,
                                 "review_candidates": 0, "addendum_rate_concordant": 1}),
        (Outcome.FALSE_POSITIVE, {"alert_ppv": 0, "specificity": 0, "discordance_rate": 1,
                                  "review_candidates": 1, "addendum_rate_discordant": 1}),
        (Outcome.FALSE_NEGATIVE, {"sensitivity": 0, "discordance_rate": 1,
                                  "addendum_rate_discordant": 1}),
        (Outcome.TRUE_NEGATIVE, {"specificity": 1, "discordance_rate": 0,
                                 "addendum_rate_concordant": 1}),
        (Outcome.INDETERMINATE, {}),
        (Outcome.NO_AI_RESULT, {}),
    ],
)  # fmt: skip
def test_report_contributions_by_outcome(outcome: Outcome, expected: dict[str, int]) -> None:
    got = slots(
        rec(
            outcome=outcome,
            report_final_at_ms=T,
            addendum_count=1,
            review_candidate=outcome is Outcome.FALSE_POSITIVE,
        )
    )
    assert got.pop("coverage") == (T, 0 if outcome is Outcome.NO_AI_RESULT else 1, 1)
    assert got.pop("addendum_rate") == (T, 1, 1)
    assert {k: v[1] for k, v in got.items()} == expected
    assert all(v[0] == T and v[2] == 1 for v in got.values())


def test_report_turnaround_is_split_by_ai_result() -> None:
    base = {"report_final_at_ms": T, "report_tat_ms": HOUR_MS,
            "inference_status": InferenceStatus.SUCCEEDED}  # fmt: skip
    positive = slots(rec(**base, ai_result=InferenceResult.POSITIVE))
    negative = slots(rec(**base, ai_result=InferenceResult.NEGATIVE))
    assert "report_tat_ai_positive" in positive and "report_tat_ai_negative" not in positive
    assert "report_tat_ai_negative" in negative and "report_tat_ai_positive" not in negative
    buckets = LogBuckets()
    buckets.add(HOUR_MS)
    assert positive["report_tat_ai_positive"] == (T, next(iter(buckets.counts)), 1)


def test_summaries() -> None:
    ppv = KPI_BY_NAME["alert_ppv"]
    assert summarise_counts(ppv, 0, 0) is None
    num, den, value, low, high, p50, p90, p_value = summarise_counts(ppv, 3, 4) or ()
    assert (num, den, value, p50, p90, p_value) == (3.0, 4.0, 0.75, None, None, None)
    assert low is not None and high is not None and low < 0.75 < high
    rate = summarise_counts(KPI_BY_NAME["ai_positive_rate"], 1, 4)
    assert rate is not None and rate[2] == 25.0 and rate[4] is not None and rate[4] > 25.0
    assert KPI_BY_NAME["review_candidates"].kind is KpiKind.COUNT
    assert summarise_counts(KPI_BY_NAME["review_candidates"], 2, 9) == (
        2.0, 9.0, 2.0, None, None, None, None, None,
    )  # fmt: skip
    assert summarise_durations({}, 1.02) is None
    durations = summarise_durations({10: 3}, 1.02)
    assert durations is not None and durations[1] == 3.0 and durations[2] == durations[5]


def test_kpi_value_built_without_validation_equals_the_validated_model() -> None:
    from schemas.records import KpiValue
    from streams.core.kpi.catalogue import kpi_value

    for summary in [
        (3.0, 4.0, 0.75, 0.3, 0.95, None, None, None),
        (None, 12.0, 5000.0, None, None, 5000.0, 9000.0, None),
        (None, 140.0, 0.51, None, None, None, None, 0.0123),
    ]:
        built = kpi_value(0, 1, DAY_MS, ("site-01", "ich-detect", "*", "ICH"), 2, True, summary)
        assert built == KpiValue.model_validate(built.model_dump())
        validated = KpiValue.model_validate(built.model_dump())
        for name in KpiValue.model_fields:
            assert type(getattr(built, name)) is type(getattr(validated, name)), name
        assert built.model_fields_set == validated.model_fields_set
        assert list(built.model_dump()) == list(validated.model_dump())
        assert pickle.loads(pickle.dumps(built)) == validated
        assert built.model_copy(update={"revision": 3}).revision == 3


def test_summaries_carry_floats_as_kpi_value_copies_them_unconverted() -> None:
    for spec in KPIS:
        if spec.kind in (KpiKind.PROPORTION, KpiKind.COUNT):
            summary = summarise_counts(spec, 3, 4)
            assert summary is not None
            assert all(v is None or type(v) is float for v in summary), spec.name
    summary = summarise_durations({10: 2, 12: 1}, 1.02)
    assert summary is not None and all(v is None or type(v) is float for v in summary)
