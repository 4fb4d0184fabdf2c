"""Observed rates of a large run sit within a few standard errors of the configured ones."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from schemas.events import ReportEvent, ReportStatus
from streams.simulate.run import SimulationRun
from tests.unit.simulate.conftest import LARGE


def _close(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


def _rows(truth_rows: list[Any], code: str) -> list[Any]:
    return [a for study in truth_rows for a in study["algorithms"] if a["finding_code"] == code]


@pytest.mark.parametrize("code", ["ICH", "PE"])
def test_prevalence_sensitivity_specificity(large_truth_rows: list[Any], code: str) -> None:
    algorithm = LARGE.algorithm(code)
    rows = _rows(large_truth_rows, code)
    assert len(rows) > 2_500

    present = sum(r["present"] for r in rows)
    assert _close(present / len(rows), algorithm.prevalence, len(rows))

    scored = [r for r in rows if r["inference_status"] == "SUCCEEDED"]
    diseased = [r for r in scored if r["present"]]
    healthy = [r for r in scored if not r["present"]]
    sensitivity = sum(r["ai_result"] == "POSITIVE" for r in diseased) / len(diseased)
    specificity = sum(r["ai_result"] == "NEGATIVE" for r in healthy) / len(healthy)
    assert _close(sensitivity, algorithm.sensitivity, len(diseased))
    assert _close(specificity, algorithm.specificity, len(healthy))


@pytest.mark.parametrize("code", ["ICH", "PE"])
def test_scores_are_consistent_with_results(large_truth_rows: list[Any], code: str) -> None:
    for row in _rows(large_truth_rows, code):
        if row["inference_status"] != "SUCCEEDED":
            assert row["score"] is None
            continue
        assert 0.0 <= row["score"] <= 1.0
        positive = row["score"] >= row["threshold"]
        assert (row["ai_result"] == "POSITIVE") is positive


def test_failures_and_routing_gaps(large_truth_rows: list[Any]) -> None:
    rows = [a for study in large_truth_rows for a in study["algorithms"]]
    routed = [r for r in rows if r["inference_status"] is not None]
    failed = sum(r["inference_status"] in ("FAILED", "TIMED_OUT") for r in routed)
    assert _close(failed / len(routed), 0.015, len(routed))
    statuses = Counter(r["inference_status"] for r in routed)
    assert statuses["TIMED_OUT"] > 0 and statuses["FAILED"] > statuses["TIMED_OUT"]
    missing = len(rows) - len(routed)
    assert _close(missing / len(rows), 0.01, len(rows))


def test_ineligible_exams_appear_without_algorithms(large_truth_rows: list[Any]) -> None:
    exams = Counter(study["exam"] for study in large_truth_rows)
    assert _close(exams["ABDOMEN_CT"] / len(large_truth_rows), 0.10, len(large_truth_rows))
    for study in large_truth_rows:
        codes = {a["finding_code"] for a in study["algorithms"]}
        expected = {"HEAD_CT": {"ICH"}, "CTA_CHEST": {"PE"}, "ABDOMEN_CT": set()}[study["exam"]]
        assert codes == expected


def test_addenda_follow_about_one_percent_of_finals(large_run: SimulationRun) -> None:
    reports = [
        d.event
        for d in large_run.deliveries
        if not d.duplicate and isinstance(d.event, ReportEvent)
    ]
    statuses = Counter(r.status for r in reports)
    finals = statuses[ReportStatus.FINAL]
    addenda = statuses[ReportStatus.AMENDED] + statuses[ReportStatus.CORRECTED]
    addenda += statuses[ReportStatus.APPENDED]
    assert _close(addenda / finals, LARGE.report.addendum_rate, finals)
    assert _close(
        statuses[ReportStatus.PRELIMINARY] / finals, LARGE.report.preliminary_rate, finals
    )


def test_some_addenda_flip_a_label_towards_the_truth(large_truth_rows: list[Any]) -> None:
    flipped = [
        a
        for study in large_truth_rows
        for a in study["algorithms"]
        if a["addendum_label"] is not None and a["addendum_label"] != a["final_label"]
    ]
    assert flipped
    for row in flipped:
        assert row["addendum_label"] == ("PRESENT" if row["present"] else "ABSENT")


def test_report_labels_follow_the_truth_up_to_labelling_errors(
    large_truth_rows: list[Any],
) -> None:
    rows = [
        a for study in large_truth_rows for a in study["algorithms"] if a["final_label"] is not None
    ]
    wrong = sum(
        a["final_label"] != ("PRESENT" if a["present"] else "ABSENT")
        and a["final_label"] != "INDETERMINATE"
        for a in rows
    )
    # NLP errors on ~80% of reports at 2%, plus label-flipping addenda: about 1.6%.
    assert 0.005 < wrong / len(rows) < 0.03


def test_duplicate_rate(large_run: SimulationRun) -> None:
    stats = large_run.stats
    generated = sum(stats.generated.values())
    assert _close(stats.duplicates / generated, LARGE.delivery.duplicate_rate, generated)
    assert _close(stats.late / generated, LARGE.delivery.late_rate, generated)
