"""Adding one event to a study's state: the only place events become facts.

Pure and order-free: what it adds never depends on the facts already there, except
for the least-of rule of the study-level pseudonyms, which is itself order-independent.
"""

from __future__ import annotations

from dataclasses import replace

from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from streams.core.config import LineageConfig
from streams.core.lineage_state import (
    AlertFact,
    FindingFact,
    InferenceFact,
    ReportFact,
    RowState,
    StudyState,
)
from streams.core.outcome import FINAL_STATUSES
from streams.core.pseudonym import IdentifierKind, Pseudonymiser

__all__ = ["fold_event"]

_NEW_ROW = RowState()


def fold_event(
    state: StudyState, event: Event, pseudonymiser: Pseudonymiser, config: LineageConfig
) -> StudyState:
    """Returns the state with the event's fact added.

    Called by the joiner for an event that is not a duplicate. Direct identifiers are
    pseudonymised here, before they could reach the state.
    """
    rows = dict(state.rows)
    reports = state.reports
    patient_ref, accession_ref = state.patient_ref, state.accession_ref
    if isinstance(event, InferenceEvent | ReportEvent):
        ref = pseudonymiser.optional_ref
        patient_ref = _least(patient_ref, ref(IdentifierKind.PATIENT, event.patient_id))
        accession_ref = _least(accession_ref, ref(IdentifierKind.ACCESSION, event.accession_number))
    if isinstance(event, InferenceEvent):
        row_key = (event.algorithm_name, event.finding_code)
        row = rows.get(row_key, _NEW_ROW)
        rows[row_key] = RowState(
            (*row.inferences, _inference_fact(event)),
            row.alerts,
            row.alert_versions,
            row.alert_inference_ids,
            row.eligible,
            row.emitted,
        )
    elif isinstance(event, AlertEvent):
        row_key = (event.algorithm_name, event.finding_code)
        row = rows.get(row_key, _NEW_ROW)
        fact = AlertFact(event.event_id, event.occurred_at_ms, event.state, event.channel)
        rows[row_key] = RowState(
            row.inferences,
            (*row.alerts, fact),
            _with(row.alert_versions, event.algorithm_version),
            _with(row.alert_inference_ids, event.inference_event_id),
            row.eligible,
            row.emitted,
        )
    else:
        reports = (*reports, _report_fact(event))
        if event.status in FINAL_STATUSES:
            for eligible in config.eligible_algorithms(event.modality, event.body_part):
                row_key = (eligible.algorithm_name, eligible.finding_code)
                row = rows.get(row_key, _NEW_ROW)
                if not row.eligible:
                    rows[row_key] = replace(row, eligible=True)
    return StudyState(
        last_event_ms=max(state.last_event_ms, event.occurred_at_ms),
        patient_ref=patient_ref,
        accession_ref=accession_ref,
        reports=reports,
        rows=rows,
        event_ids=state.event_ids | {event.event_id},
    )


def _least(current: str | None, candidate: str | None) -> str | None:
    # The least value seen does not depend on arrival order.
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


def _with(values: tuple[str, ...], value: str | None) -> tuple[str, ...]:
    if value is None or value in values:
        return values
    return tuple(sorted((*values, value)))


def _inference_fact(event: InferenceEvent) -> InferenceFact:
    return InferenceFact(
        event_id=event.event_id,
        occurred_at_ms=event.occurred_at_ms,
        algorithm_version=event.algorithm_version,
        modality=event.modality,
        body_part=event.body_part,
        manufacturer=event.manufacturer,
        status=event.status,
        failure_reason=event.failure_reason,
        score=event.score,
        threshold=event.threshold,
        result=event.result,
        study_available_at_ms=event.study_available_at_ms,
        completed_at_ms=event.completed_at_ms,
    )


def _report_fact(event: ReportEvent) -> ReportFact:
    return ReportFact(
        event_id=event.event_id,
        occurred_at_ms=event.occurred_at_ms,
        status=event.status,
        report_id=event.report_id,
        exam_completed_at_ms=event.exam_completed_at_ms,
        critical_result_communicated_at_ms=event.critical_result_communicated_at_ms,
        modality=event.modality,
        body_part=event.body_part,
        findings=tuple(
            FindingFact(f.finding_code, f.label, f.label_method) for f in event.findings
        ),
    )
