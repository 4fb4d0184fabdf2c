"""Drift, scanner change and unanswered channel touch only what they name."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import pytest

from schemas.events import AlertChannel, AlertEvent, AlertState, InferenceEvent, InferenceStatus
from streams.simulate.config import DriftKind, DriftScenario, ScannerChange, SimulationConfig
from streams.simulate.run import SimulationRun, run_simulation
from streams.simulate.scenarios import conditions_for
from streams.simulate.truth import AlgorithmTruth, StudyTruth

BASE = SimulationConfig(seed=7, days=24, sites=3, studies_per_day=80)
DRIFT_DAY = 12


def _healthy(truths: list[StudyTruth], code: str) -> list[AlgorithmTruth]:
    return [
        a
        for t in truths
        for a in t.algorithms
        if a.finding_code == code
        and not a.present
        and a.inference_status is InferenceStatus.SUCCEEDED
    ]


def _specificity(truths: list[StudyTruth], code: str) -> float:
    healthy = _healthy(truths, code)
    return sum(a.ai_result == "NEGATIVE" for a in healthy) / len(healthy)


def _specificity_near(truths: list[StudyTruth], code: str, expected: float) -> bool:
    """Within 4 standard errors of ``expected``."""
    n = len(_healthy(truths, code))
    return abs(_specificity(truths, code) - expected) <= 4 * math.sqrt(
        expected * (1 - expected) / n
    )


def _split(run: SimulationRun, site: str) -> dict[str, list[StudyTruth]]:
    parts: dict[str, list[StudyTruth]] = defaultdict(list)
    for truth in run.truths:
        if truth.site_id != site:
            parts["other sites"].append(truth)
        elif truth.day < DRIFT_DAY:
            parts["before"].append(truth)
        else:
            parts["after"].append(truth)
    return parts


def _site_events(run: SimulationRun, site: str) -> list[tuple[int, str]]:
    return sorted(
        (d.delivered_at_ms, d.event.model_dump_json())
        for d in run.deliveries
        if d.event.site_id != site
    )


@pytest.fixture(scope="module")
def baseline() -> SimulationRun:
    return run_simulation(BASE)


def test_specificity_drop_hits_the_site_from_the_day_on(baseline: SimulationRun) -> None:
    drift = DriftScenario(site_id="site-02", start_day=DRIFT_DAY, magnitude=0.3)
    run = run_simulation(BASE.model_copy(update={"drifts": (drift,)}))
    parts = _split(run, "site-02")
    for code, specificity in (("ICH", 0.92), ("PE", 0.90)):
        assert _specificity_near(parts["before"], code, specificity)
        assert _specificity_near(parts["after"], code, specificity - 0.3)
        assert _specificity_near(parts["other sites"], code, specificity)
    assert all(a.drifted for t in parts["after"] for a in t.algorithms)
    assert not any(a.drifted for t in parts["before"] + parts["other sites"] for a in t.algorithms)
    # Other sites are byte-for-byte what they were without the drift.
    assert _site_events(run, "site-02") == _site_events(baseline, "site-02")


def test_score_shift_moves_the_scores_of_one_algorithm(baseline: SimulationRun) -> None:
    drift = DriftScenario(
        site_id="site-03",
        start_day=DRIFT_DAY,
        kind=DriftKind.SCORE_SHIFT,
        magnitude=0.3,
        finding_code="PE",
    )
    run = run_simulation(BASE.model_copy(update={"drifts": (drift,)}))

    def mean_score(truths: list[StudyTruth], code: str) -> float:
        return statistics.fmean(
            a.score
            for t in truths
            for a in t.algorithms
            if a.finding_code == code and a.score is not None
        )

    drifted, reference = _split(run, "site-03"), _split(baseline, "site-03")
    assert mean_score(drifted["after"], "PE") > mean_score(reference["after"], "PE") + 0.2
    # Healthy scores near the threshold cross it: P(Beta(2, 5) > 0.4) = 0.23 of negatives.
    assert _specificity(drifted["after"], "PE") < _specificity(reference["after"], "PE") - 0.12
    assert mean_score(drifted["after"], "ICH") == mean_score(reference["after"], "ICH")
    assert mean_score(drifted["before"], "PE") == mean_score(reference["before"], "PE")


def test_scanner_change_changes_manufacturer_and_scores(baseline: SimulationRun) -> None:
    change = ScannerChange(site_id="site-01", start_day=DRIFT_DAY, score_shift=0.1)
    run = run_simulation(BASE.model_copy(update={"scanner_changes": (change,)}))
    inferences = [d.event for d in run.deliveries if isinstance(d.event, InferenceEvent)]
    day_of = {t.study_uid: t.day for t in run.truths}
    for event in inferences:
        changed = event.site_id == "site-01" and day_of[event.study_uid] >= DRIFT_DAY
        assert (event.manufacturer == "CANON MEDICAL SYSTEMS") is changed
    after = [t for t in run.truths if t.site_id == "site-01" and t.day >= DRIFT_DAY]
    before = [t for t in baseline.truths if t.site_id == "site-01" and t.day >= DRIFT_DAY]
    scores_after = [a.score for t in after for a in t.algorithms if a.score is not None]
    scores_before = [a.score for t in before for a in t.algorithms if a.score is not None]
    assert statistics.fmean(scores_after) > statistics.fmean(scores_before) + 0.07
    assert all(t.scanner_changed for t in after)


def test_unanswered_channel_never_gets_a_response() -> None:
    config = BASE.model_copy(update={"days": 8, "unanswered_channels": (AlertChannel.MOBILE_PUSH,)})
    run = run_simulation(config)
    by_alert: dict[str, list[AlertEvent]] = defaultdict(list)
    for delivery in run.deliveries:
        if isinstance(delivery.event, AlertEvent):
            by_alert[delivery.event.alert_id].append(delivery.event)
    silent = {AlertState.RAISED, AlertState.DELIVERED, AlertState.ESCALATED, AlertState.EXPIRED}
    mobile = [
        events for events in by_alert.values() if events[0].channel is AlertChannel.MOBILE_PUSH
    ]
    assert len(mobile) > 50
    for events in mobile:
        states = {e.state for e in events}
        assert states <= silent
        assert AlertState.EXPIRED in states
    answered = [
        events
        for events in by_alert.values()
        if events[0].channel is not AlertChannel.MOBILE_PUSH
        and {e.state for e in events} & {AlertState.ACCEPTED, AlertState.DISMISSED}
    ]
    assert len(answered) > 0.7 * (len(by_alert) - len(mobile))


def test_conditions_only_apply_to_their_site_and_days() -> None:
    config = BASE.model_copy(
        update={
            "drifts": (DriftScenario(site_id="site-02", start_day=5, magnitude=0.1),),
            "scanner_changes": (ScannerChange(site_id="site-02", start_day=8),),
        }
    )
    assert not conditions_for(config, 2, 4).algorithms["ich-detect"].drifted
    assert conditions_for(config, 2, 5).algorithms["ich-detect"].specificity_drop == 0.1
    assert conditions_for(config, 2, 7).manufacturer == "GE MEDICAL SYSTEMS"
    later = conditions_for(config, 2, 8)
    assert later.manufacturer == "CANON MEDICAL SYSTEMS"
    assert later.algorithms["pe-detect"].score_shift == 0.08
    assert conditions_for(config, 1, 20).algorithms["ich-detect"].score_shift == 0.0


def test_scenarios_must_name_known_sites() -> None:
    with pytest.raises(ValueError, match="unknown site"):
        SimulationConfig(sites=2, drifts=(DriftScenario(site_id="site-03", start_day=1),))
