"""Output record contracts (DESIGN §4-§6), as frozen pydantic models.

Lineage records, KPI values, breaches, review candidates and dead letters. The Avro
schemas under ``schemas/avro`` (namespace ``imgov.governance.v1``) are the source of
truth; a unit test checks schema and model agree field by field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    LabelMethod,
    ReportStatus,
)

__all__ = [
    "AuditCheckpoint",
    "Breach",
    "BreachState",
    "ChainHead",
    "Completeness",
    "DeadLetter",
    "DeadLetterReason",
    "Header",
    "KpiValue",
    "LineageRecord",
    "Outcome",
    "ReportLabel",
    "ReviewCandidate",
    "Severity",
]


class Outcome(StrEnum):
    TRUE_POSITIVE = "TRUE_POSITIVE"
    FALSE_POSITIVE = "FALSE_POSITIVE"
    FALSE_NEGATIVE = "FALSE_NEGATIVE"
    TRUE_NEGATIVE = "TRUE_NEGATIVE"
    INDETERMINATE = "INDETERMINATE"
    AI_FAILED = "AI_FAILED"
    AWAITING_REPORT = "AWAITING_REPORT"
    NO_AI_RESULT = "NO_AI_RESULT"


class Completeness(StrEnum):
    OPEN = "OPEN"
    COMPLETE = "COMPLETE"
    EXPIRED_NO_REPORT = "EXPIRED_NO_REPORT"
    EXPIRED_NO_AI = "EXPIRED_NO_AI"


class ReportLabel(StrEnum):
    """The report's label for the row's finding; NONE when the report has none."""

    PRESENT = "PRESENT"
    ABSENT = "ABSENT"
    INDETERMINATE = "INDETERMINATE"
    NONE = "NONE"


class Severity(StrEnum):
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class BreachState(StrEnum):
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


class DeadLetterReason(StrEnum):
    UNDECODABLE = "UNDECODABLE"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    LATE_AFTER_EVICTION = "LATE_AFTER_EVICTION"
    OVERSIZED = "OVERSIZED"
    LATE_AFTER_WINDOW_CLOSED = "LATE_AFTER_WINDOW_CLOSED"
    """A lineage revision whose KPI contribution reached windows already closed."""
    SINK_REJECTED = "SINK_REJECTED"
    """An output row the audit database refused (a value its column does not take):
    the row as JSON, the table and the database's error (``sinks.refusals``)."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LineageRecord(_Record):
    """One revision of the lineage of (site, study, algorithm, finding) (DESIGN §4).

    Direct identifiers never appear here: ``patient_ref`` and ``accession_ref`` are
    HMAC-SHA256 pseudonyms (DESIGN §8).
    """

    site_id: str
    study_uid: str
    algorithm_name: str
    finding_code: str

    algorithm_version: str | None = None
    modality: str | None = None
    body_part: str | None = None
    manufacturer: str | None = None
    patient_ref: str | None = None
    accession_ref: str | None = None

    inference_event_id: str | None = None
    inference_status: InferenceStatus | None = None
    failure_reason: str | None = None
    score: float | None = None
    threshold: float | None = None
    ai_result: InferenceResult | None = None
    study_available_at_ms: int | None = None
    inference_completed_at_ms: int | None = None

    alert_raised_at_ms: int | None = None
    alert_delivered_at_ms: int | None = None
    alert_first_response_at_ms: int | None = None
    alert_final_state: AlertState | None = None
    alert_dismissed: bool = False
    alert_escalated: bool = False
    alert_channel: AlertChannel | None = None

    report_id: str | None = None
    report_prelim_at_ms: int | None = None
    report_final_at_ms: int | None = None
    report_status: ReportStatus | None = None
    report_label: ReportLabel | None = None
    label_method: LabelMethod | None = None
    exam_completed_at_ms: int | None = None
    addendum_count: int = 0
    critical_result_communicated_at_ms: int | None = None

    outcome: Outcome
    time_to_result_ms: int | None = None
    time_to_alert_ms: int | None = None
    time_to_response_ms: int | None = None
    report_tat_ms: int | None = None
    interacted: bool = False
    review_candidate: bool = False
    completeness: Completeness

    event_ids: tuple[str, ...] = ()
    revision: int
    updated_at_ms: int
    prev_hash: str | None = None
    record_hash: str


class KpiValue(_Record):
    """One value of one KPI for one window and one set of dimensions (DESIGN §5).

    ``*`` in ``site_id`` or ``algorithm_version`` marks a roll-up. Proportions carry
    numerator, denominator and a Wilson 95% interval; durations carry p50/p90 in
    milliseconds with ``denominator`` = sample count; score drift (``score_psi``) carries
    the p-value of its chi-square test in ``p_value``. ``revision`` starts at 1 and grows
    when a late contribution changes a window that was already final.
    """

    kpi: str
    window_size: str
    window_start_ms: int
    window_end_ms: int
    site_id: str
    algorithm_name: str
    algorithm_version: str
    finding_code: str
    numerator: float | None = None
    denominator: float | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p50: float | None = None
    p90: float | None = None
    p_value: float | None = None
    final: bool
    revision: int


class Breach(_Record):
    """A breach of the governance policy opening or resolving (DESIGN §5)."""

    breach_id: str
    rule_id: str
    kpi: str
    severity: Severity
    state: BreachState
    window_size: str
    window_start_ms: int
    window_end_ms: int
    site_id: str
    algorithm_name: str
    algorithm_version: str
    finding_code: str
    value: float | None = None
    threshold: float | None = None
    evidence: str
    """Human-readable evidence: the windows and values that opened or resolved it."""


class ReviewCandidate(_Record):
    """A study for secondary reading: AI positive, report absent, nobody interacted."""

    site_id: str
    study_uid: str
    algorithm_name: str
    algorithm_version: str | None = None
    finding_code: str
    score: float | None = None
    report_id: str | None = None
    report_final_at_ms: int | None = None
    revision: int
    record_hash: str
    reason: str


class Header(_Record):
    key: str
    value: bytes | None = None


class DeadLetter(_Record):
    """An input that could not be accepted, with its original bytes (DESIGN §6, §7).

    Also a KPI contribution that reached a closed window (LATE_AFTER_WINDOW_CLOSED):
    then ``value`` is the lineage revision (JSON) and ``message`` names the windows;
    and an output row the audit database refused (SINK_REJECTED): then ``value`` is
    the row (JSON), ``key`` its identity, ``message`` the table and the error, and the
    header ``table`` names the table.
    """

    reason: DeadLetterReason
    message: str
    key: bytes | None = None
    value: bytes
    headers: tuple[Header, ...] = ()
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    event_id: str | None = None
    study_uid: str | None = None
    received_at_ms: int | None = None


class ChainHead(NamedTuple):
    """The newest revision of one lineage key, as an audit checkpoint names it.

    A named tuple rather than a model: a checkpoint holds one per open lineage key.
    """

    site_id: str
    study_uid: str
    algorithm_name: str
    finding_code: str
    revision: int
    record_hash: str


class AuditCheckpoint(_Record):
    """A signed summary of every lineage chain head of one partition (DESIGN §8).

    ``merkle_root`` summarises the heads (``streams.core.lineage.anchor``), which are
    stored beside it (ClickHouse ``audit_checkpoint_heads``) rather than in it: a
    partition holds far more heads than one Kafka message may carry. ``signature`` is
    the HMAC-SHA256, under the checkpoint key named by ``key_id``, of the canonical
    encoding of every other field.
    """

    format_version: int
    partition: int
    sequence: int
    created_at_ms: int
    watermark_ms: int | None = None
    evictable_before_ms: int | None = None
    head_count: int
    merkle_root: str
    key_id: str
    signature: str
