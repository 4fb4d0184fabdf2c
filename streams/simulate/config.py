"""Every knob of the synthetic clinic, as one frozen pydantic model.

``SimulationConfig()`` is a realistic default clinic: three sites, a head-CT intracranial
haemorrhage (ICH) detector and a CT-angiography pulmonary embolism (PE) detector. The
``imgov simulate`` command builds one from its options (or from a JSON/TOML file) and
hands it to the pure generator in ``streams.simulate.clinic``.

Base rates and where they come from (defaults sit inside the published ranges):

- ICH prevalence on emergency head CT is about 3-10% (6.1% of 1,372 non-contrast head
  CTs in Abrigo et al., Hong Kong Med J 2023;29(2):112-120). Real-world sensitivity of
  ICH detectors ranges about 0.75-0.93 and specificity 0.74-0.96: Voter et al.,
  "Diagnostic accuracy and failure mode analysis of a deep learning algorithm for the
  detection of intracranial hemorrhage", J Am Coll Radiol 2021; Kundisch et al., "Deep
  learning algorithm in detecting intracranial hemorrhages on emergency computed
  tomographies", PLoS One 2021; Abrigo 2023 (sens 0.73, spec 0.79: the low end);
  Nada et al., Neuroradiol J 2024;38(3):312-321 (sens 0.89, spec 0.96, 5,600 scans).
- PE prevalence on CT pulmonary angiography is about 10-15% in emergency practice.
  Deep-learning PE detectors: pooled sensitivity 0.88 and specificity 0.86 (Soffer et
  al., "Deep learning for pulmonary embolism detection on CTPA: a systematic review and
  meta-analysis", Sci Rep 2021;11:15814); a deployed commercial detector in Cheikh et
  al., "How artificial intelligence improves radiological interpretation in suspected
  pulmonary embolism", Eur Radiol 2022;32(9):5831-5842.
- Addenda follow about 1-2% of final reports: 1.1% of 97,003 cross-sectional reports
  (Patra et al., Indian J Radiol Imaging 2021;31(2):333-344) and 1.7% of 62,500 reports,
  of which 8.5% of the radiologist addenda corrected a clinically significant error and
  82% came within 24 h of the final report (J Am Coll Radiol 2011;8(10):703-705).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import AlertChannel

__all__ = [
    "DEFAULT_START_MS",
    "AlgorithmConfig",
    "BetaShape",
    "ChannelConfig",
    "DeliveryConfig",
    "DriftKind",
    "DriftScenario",
    "ExamType",
    "LogNormal",
    "ReportConfig",
    "ScannerChange",
    "SimulationConfig",
    "site_id_for",
]

DEFAULT_START_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: a fixed start so that a run never depends on the clock."""


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LogNormal(_Frozen):
    """A lognormal duration: ``median`` and ``maximum`` in the unit the field name says."""

    median: Positive
    sigma: Annotated[float, Field(ge=0.0)]
    maximum: Positive

    @property
    def mu(self) -> float:
        return math.log(self.median)


class BetaShape(_Frozen):
    """Shape of a Beta(a, b) distribution."""

    a: Positive
    b: Positive


class ChannelConfig(_Frozen):
    """One alert channel of an algorithm: how often it is used and how fast people answer."""

    channel: AlertChannel
    weight: Positive
    response_minutes: LogNormal
    no_response_rate: Probability = 0.05


class ExamType(_Frozen):
    """A kind of imaging exam the sites perform, and how long its report takes."""

    name: str
    modality: str
    body_part: str
    procedure_code: str
    weight: Positive
    report_tat_hours: LogNormal


class AlgorithmConfig(_Frozen):
    """One deployed AI algorithm and the statistics of its results.

    Scores are drawn so the confusion rates equal ``sensitivity`` and ``specificity``:
    the result is drawn first, then the score from a Beta shape rescaled onto the
    matching side of ``threshold`` (``[threshold, 1]`` for a positive result,
    ``[0, threshold)`` for a negative one). A score shift (drift, scanner change) moves
    the scores afterwards and the result is re-thresholded, so it changes both.
    """

    name: str
    version: str
    finding_code: str
    modality: str
    body_part: str
    procedure_code: str | None = None
    """When set, only exams with this procedure code are eligible (e.g. CTA for PE)."""
    prevalence: Probability
    sensitivity: Probability
    specificity: Probability
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    diseased_score: BetaShape = BetaShape(a=5.0, b=2.0)
    healthy_score: BetaShape = BetaShape(a=2.0, b=5.0)
    failure_rate: Probability = 0.015
    timeout_share: Probability = 0.3
    """Share of failures that are TIMED_OUT rather than FAILED."""
    missing_rate: Probability = 0.01
    """Eligible studies never sent to the algorithm (routing gaps: the coverage KPI)."""
    queue_seconds: LogNormal = LogNormal(median=15.0, sigma=0.8, maximum=1_800.0)
    processing_seconds: LogNormal = LogNormal(median=150.0, sigma=0.4, maximum=900.0)
    timeout_seconds: Positive = 600.0
    channels: tuple[ChannelConfig, ...]
    recipient_role: str = "RADIOLOGIST"
    accept_if_present: Probability = 0.92
    dismiss_if_absent: Probability = 0.7
    escalation_rate: Probability = 0.4
    """Chance that an alert still unanswered at ``escalate_after_minutes`` is escalated."""
    escalate_after_minutes: Positive = 15.0
    expire_after_minutes: Positive = 120.0

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        if not self.channels:
            raise ValueError(f"algorithm {self.name!r} needs at least one alert channel")
        if self.expire_after_minutes <= self.escalate_after_minutes:
            raise ValueError(
                f"algorithm {self.name!r}: expire_after_minutes must exceed escalate_after_minutes"
            )
        return self

    def eligible(self, exam: ExamType) -> bool:
        """True when this algorithm runs on ``exam`` (modality, body part, procedure)."""
        return (
            exam.modality == self.modality
            and exam.body_part == self.body_part
            and (self.procedure_code is None or exam.procedure_code == self.procedure_code)
        )


class ReportConfig(_Frozen):
    """Report workflow: preliminary reads, labelling, addenda, critical results."""

    preliminary_rate: Probability = 0.25
    preliminary_to_final_hours: LogNormal = LogNormal(median=8.0, sigma=0.8, maximum=72.0)
    structured_rate: Probability = 0.2
    """Share of reports whose labels come from structured reporting (no NLP error)."""
    nlp_error_rate: Probability = 0.02
    indeterminate_rate: Probability = 0.01
    addendum_rate: Probability = 0.011
    addendum_flip_rate: Probability = 0.2
    """Share of addenda that reverse a finding's label (a missed or over-called finding)."""
    addendum_delay_hours: LogNormal = LogNormal(median=1.0, sigma=2.0, maximum=240.0)
    ai_positive_tat_factor: Positive = 0.8
    """Turnaround multiplier for studies the AI flagged (worklist reprioritisation)."""
    critical_call_minutes: LogNormal = LogNormal(median=12.0, sigma=0.8, maximum=240.0)
    missing_rate: Probability = 0.003
    """Studies whose report never arrives (EXPIRED_NO_REPORT in the lineage)."""


class DeliveryConfig(_Frozen):
    """How events reach the topics: jitter, late batches, duplicates, losses."""

    jitter_seconds: LogNormal = LogNormal(median=2.0, sigma=1.0, maximum=600.0)
    late_rate: Probability = 0.02
    late_hours: LogNormal = LogNormal(median=6.0, sigma=1.0, maximum=96.0)
    duplicate_rate: Probability = 0.01
    duplicate_delay_seconds: LogNormal = LogNormal(median=30.0, sigma=1.5, maximum=3_600.0)
    drop_rate: Probability = 0.0


class DriftKind(StrEnum):
    SCORE_SHIFT = "score_shift"
    SPECIFICITY_DROP = "specificity_drop"


class DriftScenario(_Frozen):
    """From ``start_day`` (0-based) on, an algorithm at ``site_id`` degrades."""

    site_id: str
    start_day: Annotated[int, Field(ge=0)]
    kind: DriftKind = DriftKind.SPECIFICITY_DROP
    magnitude: float = 0.15
    """Score points added (score_shift) or specificity removed (specificity_drop)."""
    finding_code: str | None = None
    """The algorithm's finding code; None drifts every algorithm at the site."""


class ScannerChange(_Frozen):
    """From ``start_day`` on, ``site_id`` images on a new scanner that shifts AI scores."""

    site_id: str
    start_day: Annotated[int, Field(ge=0)]
    manufacturer: str = "CANON MEDICAL SYSTEMS"
    score_shift: float = 0.08


def site_id_for(index: int) -> str:
    """The id of the 1-based site ``index``."""
    return f"site-{index:02d}"


_HEAD_CT = ExamType(
    name="HEAD_CT",
    modality="CT",
    body_part="HEAD",
    procedure_code="CTHEADWO",
    weight=0.55,
    # Emergency head CT: reports usually within the hour, a long tail at night.
    report_tat_hours=LogNormal(median=0.75, sigma=0.7, maximum=48.0),
)
_CTA_CHEST = ExamType(
    name="CTA_CHEST",
    modality="CT",
    body_part="CHEST",
    procedure_code="CTA",
    weight=0.35,
    report_tat_hours=LogNormal(median=1.2, sigma=0.8, maximum=72.0),
)
_ABDOMEN_CT = ExamType(
    name="ABDOMEN_CT",
    modality="CT",
    body_part="ABDOMEN",
    procedure_code="CTABDPEL",
    weight=0.10,
    report_tat_hours=LogNormal(median=2.0, sigma=0.8, maximum=96.0),
)

_ICH = AlgorithmConfig(
    name="ich-detect",
    version="2.3.1",
    finding_code="ICH",
    modality="CT",
    body_part="HEAD",
    # Inside the published ranges (module docstring): prevalence 3-10%, sensitivity
    # 0.75-0.93, specificity 0.74-0.96 (Voter 2021; Kundisch 2021; Abrigo 2023; Nada 2024).
    prevalence=0.07,
    sensitivity=0.88,
    specificity=0.92,
    threshold=0.5,
    processing_seconds=LogNormal(median=120.0, sigma=0.4, maximum=900.0),
    channels=(
        ChannelConfig(
            channel=AlertChannel.WORKLIST_REPRIORITISATION,
            weight=0.4,
            response_minutes=LogNormal(median=9.0, sigma=0.9, maximum=240.0),
        ),
        ChannelConfig(
            channel=AlertChannel.DESKTOP_WIDGET,
            weight=0.3,
            response_minutes=LogNormal(median=4.0, sigma=0.9, maximum=240.0),
        ),
        ChannelConfig(
            channel=AlertChannel.MOBILE_PUSH,
            weight=0.2,
            response_minutes=LogNormal(median=6.0, sigma=1.0, maximum=240.0),
            no_response_rate=0.12,
        ),
        ChannelConfig(
            channel=AlertChannel.PAGE,
            weight=0.1,
            response_minutes=LogNormal(median=3.0, sigma=0.7, maximum=120.0),
            no_response_rate=0.03,
        ),
    ),
    recipient_role="NEURORADIOLOGIST",
)
_PE = AlgorithmConfig(
    name="pe-detect",
    version="1.8.0",
    finding_code="PE",
    modality="CT",
    body_part="CHEST",
    procedure_code="CTA",
    # PE prevalence on CTPA 10-15%; detector accuracy near the pooled 0.88/0.86 of
    # Soffer 2021 and the deployed tool of Cheikh 2022 (module docstring).
    prevalence=0.12,
    sensitivity=0.90,
    specificity=0.90,
    threshold=0.5,
    processing_seconds=LogNormal(median=180.0, sigma=0.4, maximum=900.0),
    channels=(
        ChannelConfig(
            channel=AlertChannel.WORKLIST_REPRIORITISATION,
            weight=0.5,
            response_minutes=LogNormal(median=12.0, sigma=0.9, maximum=240.0),
        ),
        ChannelConfig(
            channel=AlertChannel.DESKTOP_WIDGET,
            weight=0.3,
            response_minutes=LogNormal(median=5.0, sigma=0.9, maximum=240.0),
        ),
        ChannelConfig(
            channel=AlertChannel.MOBILE_PUSH,
            weight=0.2,
            response_minutes=LogNormal(median=7.0, sigma=1.0, maximum=240.0),
            no_response_rate=0.12,
        ),
    ),
)

DEFAULT_MANUFACTURERS = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips")


class SimulationConfig(_Frozen):
    """Everything a simulation run depends on. Equal configs give byte-identical output."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    start_ms: int = DEFAULT_START_MS
    """Start of day 0, epoch milliseconds UTC."""
    days: Annotated[int, Field(ge=1, le=36_500)] = 30
    sites: Annotated[int, Field(ge=1, le=999)] = 3
    studies_per_day: Annotated[float, Field(ge=0.0, le=10_000.0)] = 100.0
    """Mean studies per site and day (Poisson-like day-to-day variation)."""
    routing_seconds: LogNormal = LogNormal(median=90.0, sigma=0.6, maximum=3_600.0)
    """Exam completed -> study available to the AI (PACS routing)."""
    manufacturers: tuple[str, ...] = DEFAULT_MANUFACTURERS
    """Scanner manufacturer of site i is ``manufacturers[(i - 1) % len]``."""
    exams: tuple[ExamType, ...] = (_HEAD_CT, _CTA_CHEST, _ABDOMEN_CT)
    algorithms: tuple[AlgorithmConfig, ...] = (_ICH, _PE)
    report: ReportConfig = ReportConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    drifts: tuple[DriftScenario, ...] = ()
    scanner_changes: tuple[ScannerChange, ...] = ()
    unanswered_channels: tuple[AlertChannel, ...] = ()
    """Alerts on these channels are delivered but never answered: they expire."""

    @model_validator(mode="after")
    def _check(self) -> SimulationConfig:
        if not self.exams:
            raise ValueError("at least one exam type is needed")
        if not self.manufacturers:
            raise ValueError("at least one manufacturer is needed")
        names = [a.name for a in self.algorithms]
        if len(set(names)) != len(names):
            raise ValueError(f"algorithm names must be unique: {names}")
        codes = {a.finding_code for a in self.algorithms}
        known = set(self.site_ids)
        used = [d.site_id for d in self.drifts] + [c.site_id for c in self.scanner_changes]
        for site_id in used:
            if site_id not in known:
                raise ValueError(f"unknown site {site_id!r}; sites are {sorted(known)}")
        for drift in self.drifts:
            if drift.finding_code is not None and drift.finding_code not in codes:
                raise ValueError(f"drift on unknown finding code {drift.finding_code!r}")
        return self

    @property
    def site_ids(self) -> tuple[str, ...]:
        return tuple(site_id_for(i) for i in range(1, self.sites + 1))

    def algorithm(self, name_or_code: str) -> AlgorithmConfig:
        """The algorithm with this name or finding code.

        Raises:
            KeyError: no such algorithm.
        """
        for algorithm in self.algorithms:
            if name_or_code in (algorithm.name, algorithm.finding_code):
                return algorithm
        raise KeyError(name_or_code)
