"""The report workflow of one study: preliminary, final, addendum.

Labels come from the truth, through the labelling method: NLP labels are wrong with
``nlp_error_rate`` (the reason report labels and ground truth differ), structured
labels are exact. A small share of findings is INDETERMINATE. Critical results are
called in before the final report is signed and the final report records when.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from schemas.events import Finding, Label, LabelMethod, ReportEvent, ReportStatus
from schemas.units import HOUR_MS, MINUTE_MS
from streams.simulate.config import ExamType, LogNormal, ReportConfig
from streams.simulate.sampling import WeightedChoice, lognormal_ms, uuid4_from

__all__ = ["ReportTimeline", "StudyContext", "simulate_reports"]

_SIGN_MINUTES = LogNormal(median=4.0, sigma=0.7, maximum=120.0)
"""Critical call -> final report signed."""
_HL7_STATUS = {
    ReportStatus.PRELIMINARY: "P",
    ReportStatus.FINAL: "F",
    ReportStatus.CORRECTED: "C",
    ReportStatus.AMENDED: "C",
    ReportStatus.APPENDED: "C",
}
_ADDENDUM_KINDS = WeightedChoice(
    (ReportStatus.AMENDED, ReportStatus.APPENDED, ReportStatus.CORRECTED), (0.4, 0.4, 0.2)
)


class StudyContext(NamedTuple):
    """Identifiers and times of a study that every report event repeats."""

    site_id: str
    study_uid: str
    accession_number: str
    patient_id: str
    exam: ExamType
    exam_completed_at_ms: int


@dataclass(frozen=True, slots=True)
class ReportTimeline:
    """The report events of a study, in event-time order, and their outcome."""

    events: tuple[ReportEvent, ...]
    final_at_ms: int
    final_labels: dict[str, Label]
    addendum_status: ReportStatus | None
    addendum_labels: dict[str, Label]


def _label(rng: random.Random, present: bool, method: LabelMethod, config: ReportConfig) -> Label:
    if rng.random() < config.indeterminate_rate:
        return Label.INDETERMINATE
    if method is LabelMethod.NLP and rng.random() < config.nlp_error_rate:
        present = not present
    return Label.PRESENT if present else Label.ABSENT


def simulate_reports(
    rng: random.Random,
    config: ReportConfig,
    study: StudyContext,
    truths: Sequence[tuple[str, bool]],
    ai_flagged: bool,
) -> ReportTimeline | None:
    """The reports of one study, or None when its report never arrives.

    Args:
        rng: the study's generator.
        config: report workflow knobs.
        study: the study's identifiers.
        truths: (finding code, present) for every finding relevant to the exam.
        ai_flagged: an AI flagged the study, so its read was reprioritised.
    """
    if rng.random() < config.missing_rate:
        return None
    tat_ms = lognormal_ms(rng, study.exam.report_tat_hours, HOUR_MS)
    if ai_flagged:
        tat_ms = int(tat_ms * config.ai_positive_tat_factor)
    read_at = study.exam_completed_at_ms + tat_ms
    method = LabelMethod.STRUCTURED if rng.random() < config.structured_rate else LabelMethod.NLP
    labels = {code: _label(rng, present, method, config) for code, present in truths}
    addendum_status: ReportStatus | None = None
    addendum_labels: dict[str, Label] = {}
    if rng.random() < config.addendum_rate:
        addendum_status = _ADDENDUM_KINDS.draw(rng)
        addendum_labels = dict(labels)
        if truths and rng.random() < config.addendum_flip_rate:
            # A label-changing addendum corrects a miss or an over-call: the final report
            # got this finding wrong and the addendum restores the truth.
            code, present = truths[rng.randrange(len(truths))]
            labels[code] = Label.ABSENT if present else Label.PRESENT
            addendum_labels[code] = Label.PRESENT if present else Label.ABSENT
    preliminary = rng.random() < config.preliminary_rate
    critical_at: int | None = None
    if any(label is Label.PRESENT for label in labels.values()):
        critical_at = read_at + lognormal_ms(rng, config.critical_call_minutes, MINUTE_MS)
    if preliminary:
        final_at = read_at + lognormal_ms(rng, config.preliminary_to_final_hours, HOUR_MS)
    else:
        final_at = read_at
    if critical_at is not None:
        final_at = max(final_at, critical_at + lognormal_ms(rng, _SIGN_MINUTES, MINUTE_MS))
    attending = f"{study.site_id}-rad-{rng.randrange(1, 31):02d}"
    resident = f"{study.site_id}-res-{rng.randrange(1, 21):02d}"
    report_id = f"RPT-{study.accession_number}"

    def event(
        status: ReportStatus,
        at_ms: int,
        current: dict[str, Label],
        interpreter: str,
        report: str = report_id,
        parent: str | None = None,
    ) -> ReportEvent:
        return ReportEvent(
            event_id=uuid4_from(rng),
            occurred_at_ms=at_ms,
            site_id=study.site_id,
            study_uid=study.study_uid,
            accession_number=study.accession_number,
            patient_id=study.patient_id,
            modality=study.exam.modality,
            body_part=study.exam.body_part,
            procedure_code=study.exam.procedure_code,
            report_id=report,
            parent_report_id=parent,
            status=status,
            hl7_result_status=_HL7_STATUS[status],
            interpreter_id=interpreter,
            exam_completed_at_ms=study.exam_completed_at_ms,
            findings=tuple(
                Finding(finding_code=code, label=label, label_method=method)
                for code, label in current.items()
            ),
            critical_result_communicated_at_ms=(
                critical_at if critical_at is not None and critical_at <= at_ms else None
            ),
        )

    events: list[ReportEvent] = []
    if preliminary:
        events.append(event(ReportStatus.PRELIMINARY, read_at, labels, resident))
    events.append(event(ReportStatus.FINAL, final_at, labels, attending))

    if addendum_status is not None:
        addendum_at = final_at + max(1, lognormal_ms(rng, config.addendum_delay_hours, HOUR_MS))
        if critical_at is None and Label.PRESENT in addendum_labels.values():
            critical_at = addendum_at  # a finding missed in the final report is called in now
        if addendum_status is ReportStatus.APPENDED:
            # An appended addendum is a new document that points at the original report.
            events.append(
                event(
                    addendum_status,
                    addendum_at,
                    addendum_labels,
                    attending,
                    report=f"{report_id}-ADD1",
                    parent=report_id,
                )
            )
        else:
            events.append(event(addendum_status, addendum_at, addendum_labels, attending))
    return ReportTimeline(tuple(events), final_at, labels, addendum_status, addendum_labels)
