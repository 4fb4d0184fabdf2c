"""The synthetic clinic: studies, AI inferences, alerts and reports, all pure.

``ClinicSimulator(config).studies()`` yields every study of the run in generation
order (day, site, time of day), each with its events in event-time order and its ground
truth. Nothing reads the clock or the global random state: every (site, day) and every
study draws from its own generator seeded from ``config.seed``, so a study's content
depends only on the seed, its coordinates and the knobs that concern it. A drift at one
site therefore leaves every other site byte-for-byte unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.events import (
    AlertChannel,
    AlertState,
    Event,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
)
from schemas.units import DAY_MS, HOUR_MS, utc
from streams.simulate.alerts import simulate_alert
from streams.simulate.config import (
    AlgorithmConfig,
    ChannelConfig,
    SimulationConfig,
    site_id_for,
)
from streams.simulate.reports import StudyContext, simulate_reports
from streams.simulate.sampling import (
    STREAM_DAY,
    STREAM_STUDY,
    WeightedChoice,
    lognormal_ms,
    substream,
    uuid4_from,
)
from streams.simulate.scenarios import AlgorithmConditions, SiteDayConditions, conditions_for
from streams.simulate.truth import AlgorithmTruth, StudyTruth

__all__ = ["UID_ROOT", "ClinicSimulator", "SimulatedStudy"]

UID_ROOT = "1.2.826.0.1.3680043.10"
"""Study UIDs are ``<root>.<site>.<yyyymmdd>.<n>`` (DICOM UID syntax, fake but unique)."""

# Relative emergency CT volume per hour of day (UTC here): a night trough and a busy
# afternoon and evening, the usual emergency-department arrival curve.
_HOURLY_VOLUME = (
    0.55, 0.45, 0.4, 0.35, 0.35, 0.4, 0.55, 0.75, 0.95, 1.1, 1.2, 1.25,
    1.3, 1.3, 1.3, 1.3, 1.3, 1.25, 1.2, 1.1, 1.0, 0.9, 0.8, 0.65,
)  # fmt: skip
_HOURS = WeightedChoice(range(24), _HOURLY_VOLUME)
_FAILURE_REASONS = WeightedChoice(
    ("SERIES_NOT_FOUND", "UNSUPPORTED_SLICE_THICKNESS", "MODEL_ERROR", "DICOM_PARSE_ERROR"),
    (0.35, 0.3, 0.2, 0.15),
)
_SCORE_STEP = 10_000
"""Scores have 4 decimals (truncated, so a score below the threshold stays below)."""


@dataclass(frozen=True, slots=True)
class SimulatedStudy:
    """One study: its events (inference, alerts, reports; each in event-time order) and its
    ground truth."""

    events: tuple[Event, ...]
    truth: StudyTruth
    site_index: int
    day: int
    number: int
    """1-based number of the study within its site and day."""


@dataclass(slots=True)
class _AlgorithmOutcome:
    """What happened to one algorithm on a study, gathered before the truth is built."""

    algorithm: AlgorithmConfig
    present: bool
    drifted: bool
    inference: InferenceEvent | None = None
    alert_channel: AlertChannel | None = None
    alert_final_state: AlertState | None = None

    def truth(self, final_label: Label | None, addendum_label: Label | None) -> AlgorithmTruth:
        inference = self.inference
        return AlgorithmTruth(
            algorithm_name=self.algorithm.name,
            algorithm_version=self.algorithm.version,
            finding_code=self.algorithm.finding_code,
            present=self.present,
            inference_status=inference.status if inference is not None else None,
            ai_result=inference.result if inference is not None else None,
            score=inference.score if inference is not None else None,
            threshold=self.algorithm.threshold,
            drifted=self.drifted,
            alert_channel=self.alert_channel,
            alert_final_state=self.alert_final_state,
            final_label=final_label,
            addendum_label=addendum_label,
        )


class ClinicSimulator:
    """Generates the studies of one run. Cheap to build; ``studies()`` does the work."""

    def __init__(self, config: SimulationConfig) -> None:
        self._config = config
        self._exams = WeightedChoice(config.exams, [e.weight for e in config.exams])
        self._eligible: dict[str, tuple[AlgorithmConfig, ...]] = {
            exam.name: tuple(a for a in config.algorithms if a.eligible(exam))
            for exam in config.exams
        }
        self._channels: dict[str, WeightedChoice[ChannelConfig]] = {
            a.name: WeightedChoice(a.channels, [c.weight for c in a.channels])
            for a in config.algorithms
        }
        self._unanswered: frozenset[AlertChannel] = frozenset(config.unanswered_channels)

    def studies(self) -> Iterator[SimulatedStudy]:
        """Every study of the run, day by day, site by site, in time-of-day order."""
        for day in range(self._config.days):
            for site in range(1, self._config.sites + 1):
                yield from self._site_day(site, day)

    def _site_day(self, site: int, day: int) -> Iterator[SimulatedStudy]:
        config = self._config
        rng = substream(config.seed, site, day, 0, STREAM_DAY)
        mean = config.studies_per_day
        count = max(0, round(rng.gauss(mean, math.sqrt(mean)))) if mean > 0 else 0
        day_start = config.start_ms + day * DAY_MS
        times = sorted(
            day_start + _HOURS.draw(rng) * HOUR_MS + rng.randrange(HOUR_MS) for _ in range(count)
        )
        conditions = conditions_for(config, site, day)
        date = utc(day_start).strftime("%Y%m%d")
        for number, completed_at in enumerate(times, start=1):
            yield self._study(site, day, number, completed_at, date, conditions)

    def _study(
        self,
        site: int,
        day: int,
        number: int,
        completed_at: int,
        date: str,
        conditions: SiteDayConditions,
    ) -> SimulatedStudy:
        config = self._config
        rng = substream(config.seed, site, day, number, STREAM_STUDY)
        exam = self._exams.draw(rng)
        site_id = site_id_for(site)
        accession = f"A{site:03d}{date}{number:05d}"
        context = StudyContext(
            site_id=site_id,
            study_uid=f"{UID_ROOT}.{site}.{date}.{number}",
            accession_number=accession,
            patient_id=f"P{site:03d}{rng.randrange(10_000_000):07d}",
            exam=exam,
            exam_completed_at_ms=completed_at,
        )
        available_at = completed_at + lognormal_ms(rng, config.routing_seconds, 1_000)
        events: list[Event] = []
        outcomes: list[_AlgorithmOutcome] = []
        ai_flagged = False
        for algorithm in self._eligible[exam.name]:
            present = rng.random() < algorithm.prevalence
            algo_conditions = conditions.algorithms[algorithm.name]
            outcome = _AlgorithmOutcome(algorithm, present, algo_conditions.drifted)
            outcomes.append(outcome)
            if rng.random() < algorithm.missing_rate:
                continue  # never routed to the algorithm
            inference = self._inference(
                rng,
                algorithm,
                context,
                conditions.manufacturer,
                available_at,
                present,
                algo_conditions,
            )
            outcome.inference = inference
            events.append(inference)
            if inference.result is InferenceResult.POSITIVE:
                ai_flagged = True
                alert = simulate_alert(
                    rng,
                    algorithm,
                    self._channels[algorithm.name],
                    inference,
                    present,
                    self._unanswered,
                )
                events.extend(alert.events)
                outcome.alert_channel = alert.channel
                outcome.alert_final_state = alert.final_state

        report = simulate_reports(
            rng,
            config.report,
            context,
            [(o.algorithm.finding_code, o.present) for o in outcomes],
            ai_flagged,
        )
        if report is not None:
            events.extend(report.events)
            truths = [
                o.truth(
                    report.final_labels.get(o.algorithm.finding_code),
                    report.addendum_labels.get(o.algorithm.finding_code),
                )
                for o in outcomes
            ]
        else:
            truths = [o.truth(None, None) for o in outcomes]
        study_truth = StudyTruth(
            site_id=site_id,
            study_uid=context.study_uid,
            day=day,
            exam=exam.name,
            modality=exam.modality,
            body_part=exam.body_part,
            procedure_code=exam.procedure_code,
            manufacturer=conditions.manufacturer,
            scanner_changed=conditions.scanner_changed,
            accession_number=accession,
            patient_id=context.patient_id,
            exam_completed_at_ms=completed_at,
            report_final_at_ms=report.final_at_ms if report is not None else None,
            addendum_status=report.addendum_status if report is not None else None,
            algorithms=tuple(truths),
        )
        return SimulatedStudy(tuple(events), study_truth, site, day, number)

    def _inference(
        self,
        rng: random.Random,
        algorithm: AlgorithmConfig,
        study: StudyContext,
        manufacturer: str,
        available_at: int,
        present: bool,
        conditions: AlgorithmConditions,
    ) -> InferenceEvent:
        started_at = available_at + lognormal_ms(rng, algorithm.queue_seconds, 1_000)
        score: float | None = None
        failure_reason: str | None = None
        if rng.random() < algorithm.failure_rate:
            if rng.random() < algorithm.timeout_share:
                status = InferenceStatus.TIMED_OUT
                failure_reason = "TIMEOUT"
                completed_at = started_at + int(algorithm.timeout_seconds * 1_000)
            else:
                status = InferenceStatus.FAILED
                failure_reason = _FAILURE_REASONS.draw(rng)
                completed_at = started_at + lognormal_ms(rng, algorithm.processing_seconds, 300)
            # A failed inference has no result to report.
            result = InferenceResult.NOT_APPLICABLE
        else:
            status = InferenceStatus.SUCCEEDED
            completed_at = started_at + lognormal_ms(rng, algorithm.processing_seconds, 1_000)
            score = _score(rng, algorithm, present, conditions)
            result = (
                InferenceResult.POSITIVE
                if score >= algorithm.threshold
                else InferenceResult.NEGATIVE
            )
        return InferenceEvent(
            event_id=uuid4_from(rng),
            occurred_at_ms=completed_at,
            site_id=study.site_id,
            study_uid=study.study_uid,
            accession_number=study.accession_number,
            patient_id=study.patient_id,
            modality=study.exam.modality,
            body_part=study.exam.body_part,
            manufacturer=manufacturer,
            algorithm_name=algorithm.name,
            algorithm_version=algorithm.version,
            finding_code=algorithm.finding_code,
            status=status,
            failure_reason=failure_reason,
            score=score,
            threshold=algorithm.threshold,
            result=result,
            study_available_at_ms=available_at,
            started_at_ms=started_at,
            completed_at_ms=completed_at,
        )


def _score(
    rng: random.Random, algorithm: AlgorithmConfig, present: bool, conditions: AlgorithmConditions
) -> float:
    """A score whose thresholded result has the configured sensitivity and specificity.

    The result is drawn first, then a Beta-shaped score on its side of the threshold;
    a scenario's score shift moves it afterwards (and may move it across the threshold).
    """
    threshold = algorithm.threshold
    if present:
        positive = rng.random() < algorithm.sensitivity
        shape = algorithm.diseased_score
    else:
        specificity = max(0.0, algorithm.specificity - conditions.specificity_drop)
        positive = rng.random() >= specificity
        shape = algorithm.healthy_score
    u = rng.betavariate(shape.a, shape.b)
    raw = threshold + (1.0 - threshold) * u if positive else threshold * u
    shifted = min(1.0, max(0.0, raw + conditions.score_shift))
    score = math.floor(shifted * _SCORE_STEP) / _SCORE_STEP
    # Truncation must not move a score from above the threshold to below it.
    return threshold if shifted >= threshold > score else score
