"""Adding events to a study's state: the only place events become facts.

Pure and order-free: what an event adds never depends on the facts already there,
except for the least-of rule of the study-level pseudonyms, which is itself
order-independent.

The joiner folds the events of one study in one batch into a :class:`StudyBuilder`, a
mutable draft begun from the stored state, derives the records from the draft, and
freezes it once, with the new chain positions, by :meth:`StudyBuilder.build`: a batch
costs one state per study touched, not one per event. The builder also records which
rows the events can have changed (:meth:`StudyBuilder.changed_rows`), so the joiner
derives those rows alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.events import (
    AlertEvent,
    Event,
    Finding,
    Label,
    LabelMethod,
    ReportEvent,
)
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.pseudonym import IdentifierKind, Pseudonymiser
from streams.core.lineage.state import (
    AlertFact,
    FindingFact,
    InferenceFact,
    ReportFact,
    RowKey,
    RowMeta,
    RowState,
    StudyState,
)
from streams.core.lineage.summaries import FINAL_STATUSES

__all__ = ["StudyBuilder", "StudyFolder", "fold_event"]

_NEW_ROW = RowState()
_PATIENT, _ACCESSION = IdentifierKind.PATIENT, IdentifierKind.ACCESSION

_MEMO_LIMIT = 4096
"""Entries of each memo of :class:`StudyFolder`; a full memo starts over."""


class StudyFolder:
    """Turns events into facts for one joiner: its pseudonymiser and eligibility settings.

    Args:
        pseudonymiser: makes the ``*_ref`` pseudonyms (DESIGN §8).
        config: the join's settings; ``eligibility`` decides the NO_AI_RESULT rows.
    """

    def __init__(self, pseudonymiser: Pseudonymiser, config: LineageConfig) -> None:
        self.pseudonymiser = pseudonymiser
        self._config = config
        # A final report asks for its (modality, body part) eligibility: the answer is
        # the same for every report of an exam type, so it is looked up once.
        self._eligible: dict[tuple[str | None, str | None], tuple[RowKey, ...]] = {}
        # Reports repeat a few finding lists ("ICH absent by NLP"); equal facts are
        # shared, which keeps them out of every state's share of memory and of the
        # garbage collector's walks.
        self._findings: dict[
            tuple[tuple[str, Label, LabelMethod], ...], tuple[FindingFact, ...]
        ] = {}

    def begin(self, state: StudyState | None, first_event_ms: int) -> StudyBuilder:
        """Returns a draft of a study: its stored state, or a new study whose first
        accepted event happened at ``first_event_ms``."""
        return StudyBuilder(self, state, first_event_ms)

    def eligible_rows(self, modality: str | None, body_part: str | None) -> tuple[RowKey, ...]:
        """Returns the rows a final report with this modality and body part makes eligible."""
        memo_key = (modality, body_part)
        rows = self._eligible.get(memo_key)
        if rows is None:
            rows = tuple(
                (e.algorithm_name, e.finding_code)
                for e in self._config.eligible_algorithms(modality, body_part)
            )
            if len(self._eligible) >= _MEMO_LIMIT:
                self._eligible.clear()
            self._eligible[memo_key] = rows
        return rows

    def finding_facts(self, findings: tuple[Finding, ...]) -> tuple[FindingFact, ...]:
        """Returns the facts of a report's findings, shared with equal earlier ones."""
        if not findings:
            return ()
        memo_key = tuple((f.finding_code, f.label, f.label_method) for f in findings)
        facts = self._findings.get(memo_key)
        if facts is None:
            facts = tuple(FindingFact(*finding) for finding in memo_key)
            if len(self._findings) >= _MEMO_LIMIT:
                self._findings.clear()
            self._findings[memo_key] = facts
        return facts


class _RowDraft:
    """The facts of one row while a batch adds to them (a :class:`RowFacts`)."""

    __slots__ = (
        "alert_inference_ids",
        "alert_versions",
        "alerts",
        "eligible",
        "emitted",
        "inferences",
    )

    def __init__(self, row: RowState) -> None:
        self.inferences = list(row.inferences)
        self.alerts = list(row.alerts)
        self.alert_versions = list(row.alert_versions)
        self.alert_inference_ids = list(row.alert_inference_ids)
        self.eligible = row.eligible
        self.emitted = row.emitted

    def freeze(self, emitted: RowMeta | None) -> RowState:
        # Distinct and sorted, so the state does not depend on arrival order.
        return RowState(
            tuple(self.inferences),
            tuple(self.alerts),
            tuple(sorted(self.alert_versions)),
            tuple(sorted(self.alert_inference_ids)),
            self.eligible,
            emitted,
        )


class StudyBuilder:
    """A mutable draft of one study's state, for the events of one batch.

    Begun by :meth:`StudyFolder.begin`; the joiner checks :attr:`event_ids` before each
    :meth:`add` (duplicates, the size limit), derives the changed rows' records from
    the draft itself (it is a :class:`~streams.core.lineage.state.StudyFacts`), then
    freezes it into a state once, with :meth:`build`.

    Attributes:
        base: the stored state the draft began from, None for a new study.
        event_ids: the ids of the events in the draft.
        last_event_ms, patient_ref, accession_ref, reports, rows: as in
            :class:`StudyState`, so far; rows the batch added to are drafts.
        All are read-only for callers.
    """

    __slots__ = (
        "_drafts",
        "_folder",
        "_study_changed",
        "accession_ref",
        "base",
        "event_ids",
        "last_event_ms",
        "patient_ref",
        "reports",
        "rows",
    )

    def __init__(self, folder: StudyFolder, state: StudyState | None, first_event_ms: int) -> None:
        self._folder = folder
        self.base = state
        self._drafts: dict[RowKey, _RowDraft] = {}
        self._study_changed = False
        self.rows: dict[RowKey, RowState | _RowDraft]
        if state is None:
            self.last_event_ms = first_event_ms
            self.patient_ref: str | None = None
            self.accession_ref: str | None = None
            self.reports: list[ReportFact] = []
            self.rows = {}
            self.event_ids: set[str] = set()
        else:
            self.last_event_ms = state.last_event_ms
            self.patient_ref = state.patient_ref
            self.accession_ref = state.accession_ref
            self.reports = list(state.reports)
            self.rows = dict(state.rows)
            self.event_ids = set(state.event_ids)

    def add(self, event: Event) -> None:
        """Adds the fact of an event that is not a duplicate.

        Direct identifiers are pseudonymised here, before they could reach the state.
        """
        self.event_ids.add(event.event_id)
        if event.occurred_at_ms > self.last_event_ms:
            self.last_event_ms = event.occurred_at_ms
        if isinstance(event, ReportEvent):
            self._add_refs(event.patient_id, event.accession_number)
            self._add_report(event)
            return
        key = (event.algorithm_name, event.finding_code)
        draft = self._drafts.get(key)
        if draft is None:
            row = self.rows.get(key, _NEW_ROW)
            assert not isinstance(row, _RowDraft)  # drafts are in self._drafts
            draft = self._drafts[key] = self.rows[key] = _RowDraft(row)
        if isinstance(event, AlertEvent):
            draft.alerts.append(
                AlertFact(event.event_id, event.occurred_at_ms, event.state, event.channel)
            )
            if event.algorithm_version not in draft.alert_versions:
                draft.alert_versions.append(event.algorithm_version)
            inference_id = event.inference_event_id
            if inference_id is not None and inference_id not in draft.alert_inference_ids:
                draft.alert_inference_ids.append(inference_id)
            return
        self._add_refs(event.patient_id, event.accession_number)
        draft.inferences.append(
            InferenceFact(
                event.event_id,
                event.occurred_at_ms,
                event.algorithm_version,
                event.modality,
                event.body_part,
                event.manufacturer,
                event.status,
                event.failure_reason,
                event.score,
                event.threshold,
                event.result,
                event.study_available_at_ms,
                event.completed_at_ms,
            )
        )

    def changed_rows(self) -> list[RowKey] | None:
        """Returns the rows whose record the added events can have changed, sorted.

        None means every row: a report or a study-level pseudonym applies to all of
        them. Rows not returned have exactly the content they had in :attr:`base`.
        """
        if self._study_changed:
            return None
        changed = set(self._drafts)
        if not self.reports:
            # A row with no fact at all takes its updated_at_ms from the study's last
            # event time. No event creates one, but a state could hold one.
            changed.update(k for k, row in self.rows.items() if not (row.inferences or row.alerts))
        return sorted(changed)

    def build(self, emitted: Mapping[RowKey, RowMeta]) -> StudyState:
        """Returns the state with every added fact; the draft must not be used after.

        Args:
            emitted: the chain positions of the rows the joiner revised.
        """
        rows: dict[RowKey, RowState] = {}
        for key, row in self.rows.items():
            meta = emitted.get(key)
            if isinstance(row, _RowDraft):
                rows[key] = row.freeze(row.emitted if meta is None else meta)
            elif meta is None:
                rows[key] = row
            else:
                rows[key] = row.with_emitted(meta)
        return StudyState(
            self.last_event_ms,
            self.patient_ref,
            self.accession_ref,
            tuple(self.reports),
            rows,
            None,
            frozenset(self.event_ids),
        )

    def _add_refs(self, patient_id: str | None, accession_number: str | None) -> None:
        # The least value seen does not depend on arrival order.
        ref = self._folder.pseudonymiser.ref
        if patient_id is not None:
            patient_ref = ref(_PATIENT, patient_id)
            if self.patient_ref is None or patient_ref < self.patient_ref:
                self.patient_ref = patient_ref
                self._study_changed = True
        if accession_number is not None:
            accession_ref = ref(_ACCESSION, accession_number)
            if self.accession_ref is None or accession_ref < self.accession_ref:
                self.accession_ref = accession_ref
                self._study_changed = True

    def _add_report(self, event: ReportEvent) -> None:
        self.reports.append(_report_fact(event, self._folder.finding_facts(event.findings)))
        self._study_changed = True  # a report applies to every row
        if event.status not in FINAL_STATUSES:
            return
        for key in self._folder.eligible_rows(event.modality, event.body_part):
            row = self.rows.get(key, _NEW_ROW)
            if isinstance(row, _RowDraft):
                row.eligible = True
            elif not row.eligible:
                self.rows[key] = _eligible(row)


def fold_event(
    state: StudyState, event: Event, pseudonymiser: Pseudonymiser, config: LineageConfig
) -> StudyState:
    """Returns the state with the event's fact added.

    For one event at a time (tests, tools); the joiner folds a batch with a
    :class:`StudyBuilder`, which gives the same state.
    """
    builder = StudyFolder(pseudonymiser, config).begin(state, state.last_event_ms)
    builder.add(event)
    return builder.build({})


def _eligible(row: RowState) -> RowState:
    return RowState(
        row.inferences,
        row.alerts,
        row.alert_versions,
        row.alert_inference_ids,
        True,
        row.emitted,
    )


def _report_fact(event: ReportEvent, findings: tuple[FindingFact, ...]) -> ReportFact:
    return ReportFact(
        event.event_id,
        event.occurred_at_ms,
        event.status,
        event.report_id,
        event.exam_completed_at_ms,
        event.critical_result_communicated_at_ms,
        event.modality,
        event.body_part,
        findings,
    )
