"""Lineage record content as a pure function of a study's facts (DESIGN §4).

Called by the joiner after every change of a study's state and at its eviction. Every
field is computed from the *set* of facts with a rule that does not depend on the order
they arrived in, which is what makes the join deterministic:

- the inference of a row: among the inferences referenced by the row's alerts
  (``inference_event_id``), or all of them when none is referenced, the greatest by
  (SUCCEEDED first, completion time, event time, event_id): a failed run followed by a
  successful retry counts as a result, and of several results the latest stands;
- alerts: raised / delivered / first response = earliest time of those states;
  final state = the state of the greatest (time, lifecycle precedence, event_id);
  channel = that of the earliest RAISED (else earliest) event;
- reports (shared by every row of the study): prelim / final = earliest PRELIMINARY /
  FINAL-CORRECTED-AMENDED time; status = latest by (time, event_id); label = from the
  latest event carrying findings, NONE when it has no finding for the row, and NONE
  when the latest status is CANCELLED or ENTERED_IN_ERROR (a voided report is no
  ground truth); addenda = CORRECTED/AMENDED/APPENDED events after the first final;
  report_id = that of the first final, else of the latest event;
- time_to_alert_ms runs from inference completion to alert raised (time_to_result_ms
  covers study available -> completed; the two add up to end-to-end). Durations are
  plain differences: a negative one reveals clock skew and is kept, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportStatus,
)
from schemas.records import Completeness, Outcome, ReportLabel
from streams.core.lineage_state import (
    AlertFact,
    FindingFact,
    InferenceFact,
    ReportFact,
    RowKey,
    RowState,
    StudyState,
)

__all__ = [
    "AlertSummary",
    "RecordContent",
    "ReportSummary",
    "choose_inference",
    "classify_outcome",
    "derive_contents",
    "summarise_alerts",
    "summarise_reports",
]


class RecordContent(TypedDict):
    """The fields of a lineage record except ``revision``, ``prev_hash``, ``record_hash``.

    Mirrors :class:`schemas.records.LineageRecord`; a unit test keeps the two in step.
    """

    site_id: str
    study_uid: str
    algorithm_name: str
    finding_code: str
    algorithm_version: str | None
    modality: str | None
    body_part: str | None
    manufacturer: str | None
    patient_ref: str | None
    accession_ref: str | None
    inference_event_id: str | None
    inference_status: InferenceStatus | None
    failure_reason: str | None
    score: float | None
    threshold: float | None
    ai_result: InferenceResult | None
    study_available_at_ms: int | None
    inference_completed_at_ms: int | None
    alert_raised_at_ms: int | None
    alert_delivered_at_ms: int | None
    alert_first_response_at_ms: int | None
    alert_final_state: AlertState | None
    alert_dismissed: bool
    alert_escalated: bool
    alert_channel: AlertChannel | None
    report_id: str | None
    report_prelim_at_ms: int | None
    report_final_at_ms: int | None
    report_status: ReportStatus | None
    report_label: ReportLabel | None
    label_method: LabelMethod | None
    exam_completed_at_ms: int | None
    addendum_count: int
    critical_result_communicated_at_ms: int | None
    outcome: Outcome
    time_to_result_ms: int | None
    time_to_alert_ms: int | None
    time_to_response_ms: int | None
    report_tat_ms: int | None
    interacted: bool
    review_candidate: bool
    completeness: Completeness
    event_ids: tuple[str, ...]
    updated_at_ms: int


RESPONSE_STATES = frozenset(
    {
        AlertState.VIEWED,
        AlertState.ACKNOWLEDGED,
        AlertState.ACCEPTED,
        AlertState.MODIFIED,
        AlertState.DISMISSED,
    }
)
FINAL_STATUSES = frozenset({ReportStatus.FINAL, ReportStatus.CORRECTED, ReportStatus.AMENDED})
ADDENDUM_STATUSES = frozenset({ReportStatus.CORRECTED, ReportStatus.AMENDED, ReportStatus.APPENDED})
VOID_STATUSES = frozenset({ReportStatus.CANCELLED, ReportStatus.ENTERED_IN_ERROR})

# Breaks ties between alert events of the same millisecond: later lifecycle stages and
# terminal states win, so "raised and dismissed in the same ms" ends DISMISSED.
_ALERT_PRECEDENCE = {
    state: rank
    for rank, state in enumerate(
        (
            AlertState.RAISED,
            AlertState.DELIVERED,
            AlertState.VIEWED,
            AlertState.ACKNOWLEDGED,
            AlertState.ACCEPTED,
            AlertState.MODIFIED,
            AlertState.DISMISSED,
            AlertState.ESCALATED,
            AlertState.EXPIRED,
        )
    )
}

_LABELS = {
    Label.PRESENT: ReportLabel.PRESENT,
    Label.ABSENT: ReportLabel.ABSENT,
    Label.INDETERMINATE: ReportLabel.INDETERMINATE,
}


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """The report side of a study, shared by all its rows."""

    report_id: str
    prelim_at_ms: int | None
    final_at_ms: int | None
    status: ReportStatus
    findings: dict[str, FindingFact]
    voided: bool
    exam_completed_at_ms: int | None
    addendum_count: int
    critical_result_communicated_at_ms: int | None
    modality: str | None
    body_part: str | None

    def label_for(self, finding_code: str) -> tuple[ReportLabel, FindingFact | None]:
        """Returns the row's label and the finding it came from (None for NONE)."""
        finding = None if self.voided else self.findings.get(finding_code)
        if finding is None:
            return ReportLabel.NONE, None
        return _LABELS[finding.label], finding


def _min(current: int | None, value: int | None) -> int | None:
    if value is None:
        return current
    return value if current is None or value < current else current


# Single passes below: this runs for every row after every event, so it avoids one
# generator per field.


def summarise_reports(reports: tuple[ReportFact, ...]) -> ReportSummary | None:
    """Returns the report side of a study, or None when it has no report event."""
    if not reports:
        return None
    latest = first_final = label_source = with_modality = with_body_part = None
    prelim = exam = critical = None
    for f in reports:
        order = (f.occurred_at_ms, f.event_id)
        if latest is None or order > (latest.occurred_at_ms, latest.event_id):
            latest = f
        if f.status in FINAL_STATUSES and (
            first_final is None or order < (first_final.occurred_at_ms, first_final.event_id)
        ):
            first_final = f
        if f.findings and (
            label_source is None or order > (label_source.occurred_at_ms, label_source.event_id)
        ):
            label_source = f
        if f.modality is not None and (
            with_modality is None or order > (with_modality.occurred_at_ms, with_modality.event_id)
        ):
            with_modality = f
        if f.body_part is not None and (
            with_body_part is None
            or order > (with_body_part.occurred_at_ms, with_body_part.event_id)
        ):
            with_body_part = f
        if f.status is ReportStatus.PRELIMINARY:
            prelim = _min(prelim, f.occurred_at_ms)
        exam = _min(exam, f.exam_completed_at_ms)
        critical = _min(critical, f.critical_result_communicated_at_ms)
    assert latest is not None  # reports is not empty
    addenda = 0
    if first_final is not None:
        first = (first_final.occurred_at_ms, first_final.event_id)
        addenda = sum(
            1
            for f in reports
            if f.status in ADDENDUM_STATUSES and (f.occurred_at_ms, f.event_id) > first
        )
    return ReportSummary(
        report_id=(first_final or latest).report_id,
        prelim_at_ms=prelim,
        final_at_ms=None if first_final is None else first_final.occurred_at_ms,
        status=latest.status,
        findings={} if label_source is None else {x.finding_code: x for x in label_source.findings},
        voided=latest.status in VOID_STATUSES,
        exam_completed_at_ms=exam,
        addendum_count=addenda,
        critical_result_communicated_at_ms=critical,
        modality=None if with_modality is None else with_modality.modality,
        body_part=None if with_body_part is None else with_body_part.body_part,
    )


@dataclass(frozen=True, slots=True)
class AlertSummary:
    """The alert side of one row."""

    raised_at_ms: int | None
    delivered_at_ms: int | None
    first_response_at_ms: int | None
    final_state: AlertState
    dismissed: bool
    escalated: bool
    channel: AlertChannel


def summarise_alerts(alerts: tuple[AlertFact, ...]) -> AlertSummary | None:
    """Returns the alert side of a row, or None when it has no alert event."""
    if not alerts:
        return None
    raised = delivered = response = None
    dismissed = escalated = False
    final_key: tuple[int, int, str] | None = None
    final_state = AlertState.RAISED
    channel_key: tuple[bool, int, str] | None = None
    channel = AlertChannel.OTHER
    for f in alerts:
        t, state = f.occurred_at_ms, f.state
        if state is AlertState.RAISED:
            raised = _min(raised, t)
        elif state is AlertState.DELIVERED:
            delivered = _min(delivered, t)
        elif state in RESPONSE_STATES:
            response = _min(response, t)
            dismissed = dismissed or state is AlertState.DISMISSED
        elif state is AlertState.ESCALATED:
            escalated = True
        key = (t, _ALERT_PRECEDENCE[state], f.event_id)
        if final_key is None or key > final_key:
            final_key, final_state = key, state
        # The earliest RAISED event names the channel; failing that, the earliest event.
        by_channel = (state is not AlertState.RAISED, t, f.event_id)
        if channel_key is None or by_channel < channel_key:
            channel_key, channel = by_channel, f.channel
    return AlertSummary(raised, delivered, response, final_state, dismissed, escalated, channel)


def _inference_rank(fact: InferenceFact) -> tuple[bool, int, int, str]:
    completed = fact.completed_at_ms if fact.completed_at_ms is not None else fact.occurred_at_ms
    return (fact.status is InferenceStatus.SUCCEEDED, completed, fact.occurred_at_ms, fact.event_id)


def choose_inference(row: RowState) -> InferenceFact | None:
    """Returns the inference a row reports (see the module docstring), if any."""
    pool = row.inferences
    if row.alert_inference_ids:
        referenced = tuple(f for f in pool if f.event_id in row.alert_inference_ids)
        pool = referenced or pool
    return max(pool, key=_inference_rank) if pool else None


def classify_outcome(
    inference: InferenceFact | None, final_report: bool, label: ReportLabel | None
) -> Outcome:
    """Returns the outcome of a row: AI result against the report's label.

    Args:
        inference: the row's chosen inference, None when no inference arrived.
        final_report: whether the study has a final (FINAL/CORRECTED/AMENDED) report.
        label: the report's label for the row's finding.
    """
    if inference is None:
        return Outcome.NO_AI_RESULT if final_report else Outcome.AWAITING_REPORT
    if inference.status is not InferenceStatus.SUCCEEDED:
        return Outcome.AI_FAILED
    if not final_report:
        return Outcome.AWAITING_REPORT
    if inference.result is InferenceResult.POSITIVE:
        if label is ReportLabel.PRESENT:
            return Outcome.TRUE_POSITIVE
        if label is ReportLabel.ABSENT:
            return Outcome.FALSE_POSITIVE
    elif inference.result is InferenceResult.NEGATIVE:
        if label is ReportLabel.PRESENT:
            return Outcome.FALSE_NEGATIVE
        if label is ReportLabel.ABSENT:
            return Outcome.TRUE_NEGATIVE
    return Outcome.INDETERMINATE


def _diff(end: int | None, start: int | None) -> int | None:
    return None if end is None or start is None else end - start


def derive_contents(
    site_id: str, study_uid: str, state: StudyState, *, expired: bool = False
) -> dict[RowKey, RecordContent]:
    """Returns the content of every lineage record of a study.

    Args:
        site_id: the study's site.
        study_uid: the study UID as outputs carry it (possibly pseudonymised).
        state: the study's facts (not a tombstone).
        expired: whether the study is being evicted: incomplete rows then get an
            EXPIRED_* completeness.
    """
    reports = summarise_reports(state.reports)
    return {
        key: _derive_row(site_id, study_uid, key, row, state, reports, expired)
        for key, row in sorted(state.rows.items())
    }


def _derive_row(
    site_id: str,
    study_uid: str,
    key: RowKey,
    row: RowState,
    state: StudyState,
    reports: ReportSummary | None,
    expired: bool,
) -> RecordContent:
    inference = choose_inference(row)
    alerts = summarise_alerts(row.alerts)
    raised = None if alerts is None else alerts.raised_at_ms
    first_response = None if alerts is None else alerts.first_response_at_ms

    label: ReportLabel | None = None
    finding: FindingFact | None = None
    if reports is not None:
        label, finding = reports.label_for(key[1])
    final_at = None if reports is None else reports.final_at_ms
    outcome = classify_outcome(inference, final_at is not None, label)
    interacted = first_response is not None
    if inference is not None and final_at is not None:
        completeness = Completeness.COMPLETE
    elif expired:
        completeness = (
            Completeness.EXPIRED_NO_AI if inference is None else Completeness.EXPIRED_NO_REPORT
        )
    else:
        completeness = Completeness.OPEN

    facts: list[InferenceFact | AlertFact | ReportFact] = [
        *row.inferences,
        *row.alerts,
        *state.reports,
    ]
    completed = None if inference is None else inference.completed_at_ms
    available = None if inference is None else inference.study_available_at_ms
    version = (
        inference.algorithm_version
        if inference is not None
        else (max(row.alert_versions) if row.alert_versions else None)
    )
    if inference is not None:
        inference_event_id: str | None = inference.event_id
    else:
        inference_event_id = min(row.alert_inference_ids) if row.alert_inference_ids else None
    return {
        "site_id": site_id,
        "study_uid": study_uid,
        "algorithm_name": key[0],
        "finding_code": key[1],
        "algorithm_version": version,
        "modality": inference.modality if inference else (reports.modality if reports else None),
        "body_part": (
            inference.body_part if inference else (reports.body_part if reports else None)
        ),
        "manufacturer": inference.manufacturer if inference else None,
        "patient_ref": state.patient_ref,
        "accession_ref": state.accession_ref,
        "inference_event_id": inference_event_id,
        "inference_status": inference.status if inference else None,
        "failure_reason": inference.failure_reason if inference else None,
        "score": inference.score if inference else None,
        "threshold": inference.threshold if inference else None,
        "ai_result": inference.result if inference else None,
        "study_available_at_ms": available,
        "inference_completed_at_ms": completed,
        "alert_raised_at_ms": raised,
        "alert_delivered_at_ms": alerts.delivered_at_ms if alerts else None,
        "alert_first_response_at_ms": first_response,
        "alert_final_state": alerts.final_state if alerts else None,
        "alert_dismissed": alerts.dismissed if alerts else False,
        "alert_escalated": alerts.escalated if alerts else False,
        "alert_channel": alerts.channel if alerts else None,
        "report_id": reports.report_id if reports else None,
        "report_prelim_at_ms": reports.prelim_at_ms if reports else None,
        "report_final_at_ms": final_at,
        "report_status": reports.status if reports else None,
        "report_label": label,
        "label_method": finding.label_method if finding else None,
        "exam_completed_at_ms": reports.exam_completed_at_ms if reports else None,
        "addendum_count": reports.addendum_count if reports else 0,
        "critical_result_communicated_at_ms": (
            reports.critical_result_communicated_at_ms if reports else None
        ),
        "outcome": outcome,
        "time_to_result_ms": _diff(completed, available),
        "time_to_alert_ms": _diff(raised, completed),
        "time_to_response_ms": _diff(first_response, raised),
        "report_tat_ms": _diff(final_at, reports.exam_completed_at_ms if reports else None),
        "interacted": interacted,
        "review_candidate": outcome is Outcome.FALSE_POSITIVE and not interacted,
        "completeness": completeness,
        "event_ids": tuple(sorted(f.event_id for f in facts)),
        "updated_at_ms": max((f.occurred_at_ms for f in facts), default=state.last_event_ms),
    }
