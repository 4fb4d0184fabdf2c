"""Lineage record content as a pure function of a study's facts (DESIGN §4).

Called by the joiner after every change of a study's state and at its eviction. Every
field is computed from the *set* of facts with a rule that does not depend on the order
they arrived in, which is what makes the join deterministic:

- the inference of a row: among the inferences referenced by the row's alerts
  (``inference_event_id``), or all of them when none is referenced, the greatest by
  (SUCCEEDED first, completion time, event time, event_id): a failed run followed by a
  successful retry counts as a result, and of several results the latest stands;
- alerts and reports: summarised by :mod:`streams.core.lineage.summaries`, whose
  docstring gives their rules (earliest times, final alert state and channel, report
  status, label, addenda and report_id);
- time_to_alert_ms runs from inference completion to alert raised (time_to_result_ms
  covers study available -> completed; the two add up to end-to-end). Durations are
  plain differences: a negative one reveals clock skew and is kept, not hidden.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    LabelMethod,
    ReportStatus,
)
from schemas.records import Completeness, Outcome, ReportLabel
from streams.core.lineage.state import InferenceFact, RowFacts, RowKey, StudyFacts
from streams.core.lineage.summaries import summarise_alerts, summarise_reports

__all__ = [
    "RecordContent",
    "choose_inference",
    "classify_outcome",
    "derive_contents",
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


# Enum members used on the hot path, as module constants: in Python 3.11 reading a
# member off its enum class costs several times a global lookup, and these run for
# every row of every revision.
_SUCCEEDED = InferenceStatus.SUCCEEDED
_POSITIVE, _NEGATIVE = InferenceResult.POSITIVE, InferenceResult.NEGATIVE
_PRESENT, _ABSENT = ReportLabel.PRESENT, ReportLabel.ABSENT
_OPEN, _COMPLETE = Completeness.OPEN, Completeness.COMPLETE
_EXPIRED_NO_AI, _EXPIRED_NO_REPORT = Completeness.EXPIRED_NO_AI, Completeness.EXPIRED_NO_REPORT
_TRUE_POSITIVE, _FALSE_POSITIVE = Outcome.TRUE_POSITIVE, Outcome.FALSE_POSITIVE
_FALSE_NEGATIVE, _TRUE_NEGATIVE = Outcome.FALSE_NEGATIVE, Outcome.TRUE_NEGATIVE
_INDETERMINATE, _AI_FAILED = Outcome.INDETERMINATE, Outcome.AI_FAILED
_AWAITING_REPORT, _NO_AI_RESULT = Outcome.AWAITING_REPORT, Outcome.NO_AI_RESULT


def _inference_rank(fact: InferenceFact) -> tuple[bool, int, int, str]:
    completed = fact.completed_at_ms if fact.completed_at_ms is not None else fact.occurred_at_ms
    return (fact.status is _SUCCEEDED, completed, fact.occurred_at_ms, fact.event_id)


def choose_inference(row: RowFacts) -> InferenceFact | None:
    """Returns the inference a row reports (see the module docstring), if any."""
    pool = row.inferences
    if row.alert_inference_ids:
        referenced = tuple(f for f in pool if f.event_id in row.alert_inference_ids)
        pool = referenced or pool
    if len(pool) == 1:  # the usual case: no re-run
        return pool[0]
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
        return _NO_AI_RESULT if final_report else _AWAITING_REPORT
    if inference.status is not _SUCCEEDED:
        return _AI_FAILED
    if not final_report:
        return _AWAITING_REPORT
    if inference.result is _POSITIVE:
        if label is _PRESENT:
            return _TRUE_POSITIVE
        if label is _ABSENT:
            return _FALSE_POSITIVE
    elif inference.result is _NEGATIVE:
        if label is _PRESENT:
            return _FALSE_NEGATIVE
        if label is _ABSENT:
            return _TRUE_NEGATIVE
    return _INDETERMINATE


def derive_contents(
    site_id: str,
    study_uid: str,
    state: StudyFacts,
    *,
    expired: bool = False,
    rows: Iterable[RowKey] | None = None,
) -> dict[RowKey, RecordContent]:
    """Returns the content of every lineage record of a study, by row key.

    Args:
        site_id: the study's site.
        study_uid: the study UID as outputs carry it (possibly pseudonymised).
        state: the study's facts (a state, not a tombstone, or the joiner's draft).
        expired: whether the study is being evicted: incomplete rows then get an
            EXPIRED_* completeness.
        rows: only these rows (those of them the state has), when given; the joiner
            derives only the rows an event can have changed.

    Returns:
        The contents in row key order, each with its fields in RecordContent order.
    """
    if rows is None:
        items = sorted(state.rows.items())
    else:
        items = [(key, state.rows[key]) for key in sorted(rows) if key in state.rows]
    if not items:
        return {}
    study = _StudyFields(site_id, study_uid, state, expired)
    return {key: study.derive_row(key, row) for key, row in items}


class _StudyFields:
    """What every row of a study shares, computed once per derivation."""

    __slots__ = (
        "expired",
        "report_ids",
        "report_time_ms",
        "reports",
        "site_id",
        "state",
        "study_uid",
    )

    def __init__(self, site_id: str, study_uid: str, state: StudyFacts, expired: bool) -> None:
        self.site_id = site_id
        self.study_uid = study_uid
        self.state = state
        self.expired = expired
        self.reports = summarise_reports(state.reports)
        self.report_ids = [f.event_id for f in state.reports]
        self.report_time_ms = max((f.occurred_at_ms for f in state.reports), default=None)

    def derive_row(self, key: RowKey, row: RowFacts) -> RecordContent:
        """Returns the content of one row (see the module docstring for the rules)."""
        reports = self.reports
        inference = choose_inference(row)
        if inference is None:
            version = max(row.alert_versions) if row.alert_versions else None
            inference_event_id = min(row.alert_inference_ids) if row.alert_inference_ids else None
            if reports is None:
                modality = body_part = None
            else:
                modality, body_part = reports.modality, reports.body_part
            manufacturer = failure_reason = None
            status: InferenceStatus | None = None
            result: InferenceResult | None = None
            score = threshold = None
            available = completed = None
        else:
            version = inference.algorithm_version
            inference_event_id = inference.event_id
            modality = inference.modality
            body_part = inference.body_part
            manufacturer = inference.manufacturer
            status = inference.status
            failure_reason = inference.failure_reason
            score = inference.score
            threshold = inference.threshold
            result = inference.result
            available = inference.study_available_at_ms
            completed = inference.completed_at_ms

        alerts = summarise_alerts(row.alerts)
        if alerts is None:
            raised = delivered = first_response = None
            final_state: AlertState | None = None
            dismissed = escalated = False
            channel: AlertChannel | None = None
        else:
            raised = alerts.raised_at_ms
            delivered = alerts.delivered_at_ms
            first_response = alerts.first_response_at_ms
            final_state = alerts.final_state
            dismissed = alerts.dismissed
            escalated = alerts.escalated
            channel = alerts.channel

        if reports is None:
            label: ReportLabel | None = None
            label_method: LabelMethod | None = None
            report_id = prelim_at = final_at = exam_completed = critical = None
            report_status: ReportStatus | None = None
            addenda = 0
        else:
            label, finding = reports.label_for(key[1])
            label_method = None if finding is None else finding.label_method
            report_id = reports.report_id
            prelim_at = reports.prelim_at_ms
            final_at = reports.final_at_ms
            report_status = reports.status
            exam_completed = reports.exam_completed_at_ms
            critical = reports.critical_result_communicated_at_ms
            addenda = reports.addendum_count

        outcome = classify_outcome(inference, final_at is not None, label)
        interacted = first_response is not None
        if inference is not None and final_at is not None:
            completeness = _COMPLETE
        elif self.expired:
            completeness = _EXPIRED_NO_AI if inference is None else _EXPIRED_NO_REPORT
        else:
            completeness = _OPEN

        event_ids = [f.event_id for f in row.inferences]
        event_ids += [f.event_id for f in row.alerts]
        event_ids += self.report_ids
        event_ids.sort()
        updated = self.report_time_ms
        for fact in row.inferences:
            if updated is None or fact.occurred_at_ms > updated:
                updated = fact.occurred_at_ms
        for alert in row.alerts:
            if updated is None or alert.occurred_at_ms > updated:
                updated = alert.occurred_at_ms
        if updated is None:  # a row without any fact: never made by an event
            updated = self.state.last_event_ms

        return {
            "site_id": self.site_id,
            "study_uid": self.study_uid,
            "algorithm_name": key[0],
            "finding_code": key[1],
            "algorithm_version": version,
            "modality": modality,
            "body_part": body_part,
            "manufacturer": manufacturer,
            "patient_ref": self.state.patient_ref,
            "accession_ref": self.state.accession_ref,
            "inference_event_id": inference_event_id,
            "inference_status": status,
            "failure_reason": failure_reason,
            "score": score,
            "threshold": threshold,
            "ai_result": result,
            "study_available_at_ms": available,
            "inference_completed_at_ms": completed,
            "alert_raised_at_ms": raised,
            "alert_delivered_at_ms": delivered,
            "alert_first_response_at_ms": first_response,
            "alert_final_state": final_state,
            "alert_dismissed": dismissed,
            "alert_escalated": escalated,
            "alert_channel": channel,
            "report_id": report_id,
            "report_prelim_at_ms": prelim_at,
            "report_final_at_ms": final_at,
            "report_status": report_status,
            "report_label": label,
            "label_method": label_method,
            "exam_completed_at_ms": exam_completed,
            "addendum_count": addenda,
            "critical_result_communicated_at_ms": critical,
            "outcome": outcome,
            "time_to_result_ms": None
            if completed is None or available is None
            else completed - available,
            "time_to_alert_ms": None if raised is None or completed is None else raised - completed,
            "time_to_response_ms": (
                None if first_response is None or raised is None else first_response - raised
            ),
            "report_tat_ms": (
                None if final_at is None or exam_completed is None else final_at - exam_completed
            ),
            "interacted": interacted,
            "review_candidate": outcome is _FALSE_POSITIVE and not interacted,
            "completeness": completeness,
            "event_ids": tuple(event_ids),
            "updated_at_ms": updated,
        }
