"""Input event contracts (DESIGN §3), as frozen pydantic models.

The Avro schemas under ``schemas/avro`` are the source of truth; these models mirror
them field by field (a unit test checks both directions). Every timestamp is an integer
number of epoch milliseconds UTC and its name ends in ``_ms``.

These models check *types* only. Value rules that need configuration or a clock (score
range, timestamp skew, identifiable references) live in ``schemas.validation`` so the
same model can describe a record that is about to be rejected.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlertChannel",
    "AlertEvent",
    "AlertState",
    "Event",
    "EventType",
    "Finding",
    "InferenceEvent",
    "InferenceResult",
    "InferenceStatus",
    "Label",
    "LabelMethod",
    "Priority",
    "ReportEvent",
    "ReportStatus",
]


class InferenceStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


class InferenceResult(StrEnum):
    POSITIVE = "POSITIVE"
    NEGATIVE = "NEGATIVE"
    INDETERMINATE = "INDETERMINATE"
    NOT_APPLICABLE = "NOT_APPLICABLE"


class AlertState(StrEnum):
    RAISED = "RAISED"
    DELIVERED = "DELIVERED"
    VIEWED = "VIEWED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    ACCEPTED = "ACCEPTED"
    MODIFIED = "MODIFIED"
    DISMISSED = "DISMISSED"
    ESCALATED = "ESCALATED"
    EXPIRED = "EXPIRED"


class AlertChannel(StrEnum):
    WORKLIST_FLAG = "WORKLIST_FLAG"
    WORKLIST_REPRIORITISATION = "WORKLIST_REPRIORITISATION"
    DESKTOP_WIDGET = "DESKTOP_WIDGET"
    MOBILE_PUSH = "MOBILE_PUSH"
    PAGE = "PAGE"
    FHIRCAST = "FHIRCAST"
    OTHER = "OTHER"


class Priority(StrEnum):
    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class ReportStatus(StrEnum):
    """HL7 OBR-25 / FHIR DiagnosticReport.status, one event per change."""

    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    CORRECTED = "CORRECTED"
    AMENDED = "AMENDED"
    APPENDED = "APPENDED"
    CANCELLED = "CANCELLED"
    ENTERED_IN_ERROR = "ENTERED_IN_ERROR"


class Label(StrEnum):
    PRESENT = "PRESENT"
    ABSENT = "ABSENT"
    INDETERMINATE = "INDETERMINATE"


class LabelMethod(StrEnum):
    STRUCTURED = "STRUCTURED"
    NLP = "NLP"
    LLM = "LLM"
    MANUAL = "MANUAL"


class EventType(StrEnum):
    """The ``event_type`` discriminator used in JSON Lines files."""

    INFERENCE = "inference"
    ALERT = "alert"
    REPORT = "report"


class _Event(BaseModel):
    """Fields every input event carries (DESIGN §3)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    event_id: str
    occurred_at_ms: int
    site_id: str
    study_uid: str


class InferenceEvent(_Event):
    """One AI inference on one study (topic ``imaging.ai.inference.v1``)."""

    accession_number: str | None = None
    patient_id: str | None = None
    modality: str
    body_part: str | None = None
    manufacturer: str | None = None
    algorithm_name: str
    algorithm_version: str
    finding_code: str
    status: InferenceStatus
    failure_reason: str | None = None
    score: float | None = None
    threshold: float | None = None
    result: InferenceResult
    study_available_at_ms: int | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None

    @property
    def event_type(self) -> Literal[EventType.INFERENCE]:
        return EventType.INFERENCE


class AlertEvent(_Event):
    """One state change of an AI alert (topic ``imaging.ai.alert.v1``)."""

    alert_id: str
    inference_event_id: str | None = None
    algorithm_name: str
    algorithm_version: str
    finding_code: str
    state: AlertState
    channel: AlertChannel
    recipient_role: str | None = None
    recipient_id: str | None = None
    priority_before: Priority | None = None
    priority_after: Priority | None = None
    dismiss_reason: str | None = None

    @property
    def event_type(self) -> Literal[EventType.ALERT]:
        return EventType.ALERT


class Finding(BaseModel):
    """One labelled finding of a report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    finding_code: str
    label: Label
    label_method: LabelMethod


class ReportEvent(_Event):
    """One status change of a radiology report (topic ``imaging.report.v1``)."""

    accession_number: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    body_part: str | None = None
    procedure_code: str | None = None
    report_id: str
    parent_report_id: str | None = None
    status: ReportStatus
    hl7_result_status: str | None = None
    interpreter_id: str | None = None
    exam_completed_at_ms: int | None = None
    findings: Annotated[tuple[Finding, ...], Field(default=())]
    critical_result_communicated_at_ms: int | None = None

    @property
    def event_type(self) -> Literal[EventType.REPORT]:
        return EventType.REPORT


Event: TypeAlias = InferenceEvent | AlertEvent | ReportEvent
"""Any input event."""

EVENT_MODELS: dict[EventType, type[InferenceEvent] | type[AlertEvent] | type[ReportEvent]] = {
    EventType.INFERENCE: InferenceEvent,
    EventType.ALERT: AlertEvent,
    EventType.REPORT: ReportEvent,
}
