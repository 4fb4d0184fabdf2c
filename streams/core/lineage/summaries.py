"""The alert and report sides of a study's facts, each a pure function of a set (DESIGN §4).

Called by the record derivation (:mod:`streams.core.lineage.outcome`) for every row after
every change of a study's state. Like every field of a lineage record, each side is
computed with a rule that does not depend on the order the facts arrived in:

- alerts: raised / delivered / first response = earliest time of those states;
  final state = the state of the greatest (time, lifecycle precedence, event_id);
  channel = that of the earliest RAISED (else earliest) event;
- reports (shared by every row of the study): prelim / final = earliest PRELIMINARY /
  FINAL-CORRECTED-AMENDED time; status = latest by (time, event_id); label = from the
  latest event carrying findings, NONE when it has no finding for the row, and NONE
  when the latest status is CANCELLED or ENTERED_IN_ERROR (a voided report is no
  ground truth); addenda = CORRECTED/AMENDED/APPENDED events after the first final;
  report_id = that of the first final, else of the latest event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from schemas.events import AlertChannel, AlertState, Label, ReportStatus
from schemas.records import ReportLabel
from streams.core.lineage.state import AlertFact, FindingFact, ReportFact

__all__ = [
    "ADDENDUM_STATUSES",
    "FINAL_STATUSES",
    "RESPONSE_STATES",
    "VOID_STATUSES",
    "AlertSummary",
    "ReportSummary",
    "summarise_alerts",
    "summarise_reports",
]

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

# Enum members used on the hot path, as module constants: in Python 3.11 reading a
# member off its enum class costs several times a global lookup, and these run for
# every row of every revision.
_RAISED, _DELIVERED, _DISMISSED, _ESCALATED = (
    AlertState.RAISED,
    AlertState.DELIVERED,
    AlertState.DISMISSED,
    AlertState.ESCALATED,
)
_OTHER_CHANNEL = AlertChannel.OTHER
_PRELIMINARY = ReportStatus.PRELIMINARY
_NO_LABEL = ReportLabel.NONE

_LABELS = {
    Label.PRESENT: ReportLabel.PRESENT,
    Label.ABSENT: ReportLabel.ABSENT,
    Label.INDETERMINATE: ReportLabel.INDETERMINATE,
}


class ReportSummary(NamedTuple):
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
            return _NO_LABEL, None
        return _LABELS[finding.label], finding


def _min(current: int | None, value: int | None) -> int | None:
    if value is None:
        return current
    return value if current is None or value < current else current


# Single passes below: this runs for every row after every event, so it avoids one
# generator per field.


def summarise_reports(reports: Sequence[ReportFact]) -> ReportSummary | None:
    """Returns the report side of a study, or None when it has no report event."""
    if not reports:
        return None
    latest = first_final = label_source = with_modality = with_body_part = None
    prelim = exam = critical = None
    addendum_orders: list[tuple[int, str]] = []
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
        if f.status is _PRELIMINARY:
            prelim = _min(prelim, f.occurred_at_ms)
        elif f.status in ADDENDUM_STATUSES:
            addendum_orders.append(order)
        if f.exam_completed_at_ms is not None:
            exam = _min(exam, f.exam_completed_at_ms)
        if f.critical_result_communicated_at_ms is not None:
            critical = _min(critical, f.critical_result_communicated_at_ms)
    assert latest is not None  # reports is not empty
    addenda = 0
    if first_final is not None and addendum_orders:
        first = (first_final.occurred_at_ms, first_final.event_id)
        addenda = sum(1 for order in addendum_orders if order > first)
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


class AlertSummary(NamedTuple):
    """The alert side of one row."""

    raised_at_ms: int | None
    delivered_at_ms: int | None
    first_response_at_ms: int | None
    final_state: AlertState
    dismissed: bool
    escalated: bool
    channel: AlertChannel


def summarise_alerts(alerts: Sequence[AlertFact]) -> AlertSummary | None:
    """Returns the alert side of a row, or None when it has no alert event."""
    if not alerts:
        return None
    raised = delivered = response = None
    dismissed = escalated = False
    final_key: tuple[int, int, str] | None = None
    final_state = _RAISED
    channel_key: tuple[bool, int, str] | None = None
    channel = _OTHER_CHANNEL
    for f in alerts:
        t, state = f.occurred_at_ms, f.state
        if state is _RAISED:
            raised = _min(raised, t)
        elif state is _DELIVERED:
            delivered = _min(delivered, t)
        elif state in RESPONSE_STATES:
            response = _min(response, t)
            dismissed = dismissed or state is _DISMISSED
        elif state is _ESCALATED:
            escalated = True
        key = (t, _ALERT_PRECEDENCE[state], f.event_id)
        if final_key is None or key > final_key:
            final_key, final_state = key, state
        # The earliest RAISED event names the channel; failing that, the earliest event.
        by_channel = (state is not _RAISED, t, f.event_id)
        if channel_key is None or by_channel < channel_key:
            channel_key, channel = by_channel, f.channel
    return AlertSummary(raised, delivered, response, final_state, dismissed, escalated, channel)
