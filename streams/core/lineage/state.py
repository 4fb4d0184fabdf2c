"""The per-study state of the lineage join.

A :class:`StudyState` keeps, for one (site_id, study_uid), a small *fact* per accepted
event rather than running aggregates: every lineage field is then recomputed from
the set of facts (:mod:`streams.core.lineage.outcome`), which makes the result independent of
arrival order by construction, makes duplicate detection a lookup, and gives
``event_ids`` for free. Facts hold only what a lineage field needs; direct identifiers
are stored as their pseudonyms (DESIGN §8), so neither the state nor its changelog
holds one.

States are immutable: applying an event builds a new state, so the state before an
event is still at hand to rebuild the records it produced (the *old* side of a
revision pair) and a failure half-way changes nothing. Facts and rows are named
tuples rather than frozen dataclasses: as immutable, and several times cheaper to
build, which counts for the one fact made per event.

The compact byte encoding is in :mod:`streams.core.lineage.codec`, the stores in
:mod:`streams.core.lineage.store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from schemas.errors import ImgovError
from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportStatus,
)

__all__ = [
    "AlertFact",
    "FindingFact",
    "InferenceFact",
    "ReportFact",
    "RowFacts",
    "RowKey",
    "RowMeta",
    "RowState",
    "StudyFacts",
    "StudyKey",
    "StudyState",
    "StudyStateError",
]

StudyKey = tuple[str, str]
"""(site_id, study_uid); study_uid is its pseudonym when the setting says so."""

RowKey = tuple[str, str]
"""(algorithm_name, finding_code): one lineage record per row of a study."""


class StudyStateError(ImgovError):
    """Encoded study state that cannot be decoded. The message holds no content."""


class InferenceFact(NamedTuple):
    """What one inference event contributes to its row."""

    event_id: str
    occurred_at_ms: int
    algorithm_version: str
    modality: str
    body_part: str | None
    manufacturer: str | None
    status: InferenceStatus
    failure_reason: str | None
    score: float | None
    threshold: float | None
    result: InferenceResult
    study_available_at_ms: int | None
    completed_at_ms: int | None


class AlertFact(NamedTuple):
    """What one alert state change contributes to its row."""

    event_id: str
    occurred_at_ms: int
    state: AlertState
    channel: AlertChannel


class FindingFact(NamedTuple):
    """One labelled finding of a report event."""

    finding_code: str
    label: Label
    label_method: LabelMethod


class ReportFact(NamedTuple):
    """What one report status change contributes to every row of its study."""

    event_id: str
    occurred_at_ms: int
    status: ReportStatus
    report_id: str
    exam_completed_at_ms: int | None
    critical_result_communicated_at_ms: int | None
    modality: str | None
    body_part: str | None
    findings: tuple[FindingFact, ...]


class RowMeta(NamedTuple):
    """The chain position of the last revision emitted for a row."""

    revision: int
    prev_hash: str | None
    record_hash: str


class RowState(NamedTuple):
    """The facts of one (algorithm_name, finding_code) row of a study.

    Attributes:
        inferences: every inference for the row (re-runs included).
        alerts: every alert state change for the row.
        alert_versions: distinct algorithm versions named by the alerts, sorted.
        alert_inference_ids: distinct ``inference_event_id`` values of the alerts.
        eligible: a final report made the study eligible for this algorithm.
        emitted: the last revision emitted, None before the first.
    """

    inferences: tuple[InferenceFact, ...] = ()
    alerts: tuple[AlertFact, ...] = ()
    alert_versions: tuple[str, ...] = ()
    alert_inference_ids: tuple[str, ...] = ()
    eligible: bool = False
    emitted: RowMeta | None = None

    def with_emitted(self, emitted: RowMeta) -> RowState:
        """Returns the row with a new chain position (the same facts)."""
        return RowState(
            self.inferences,
            self.alerts,
            self.alert_versions,
            self.alert_inference_ids,
            self.eligible,
            emitted,
        )


@dataclass(frozen=True, slots=True)
class StudyState:
    """The join state of one study, or the tombstone of an evicted one.

    Attributes:
        last_event_ms: the greatest event time applied; eviction is measured from it.
        patient_ref: pseudonym of the patient (the least of those seen, so that it
            does not depend on arrival order).
        accession_ref: pseudonym of the accession number, chosen the same way.
        reports: every report status change of the study.
        rows: the rows by (algorithm_name, finding_code); never mutated.
        evicted_at_ms: set on a tombstone: the watermark at which the study was
            evicted. A tombstone has no facts.
        event_ids: the ids of every fact, for the duplicate check. Derived data,
            computed from the facts when not given; not encoded, not compared.
    """

    last_event_ms: int
    patient_ref: str | None = None
    accession_ref: str | None = None
    reports: tuple[ReportFact, ...] = ()
    rows: Mapping[RowKey, RowState] = field(default_factory=dict)
    evicted_at_ms: int | None = None
    event_ids: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if not self.event_ids and (self.reports or self.rows):
            ids = {f.event_id for f in self.reports}
            for row in self.rows.values():
                ids.update(f.event_id for f in row.inferences)
                ids.update(f.event_id for f in row.alerts)
            object.__setattr__(self, "event_ids", frozenset(ids))

    def __repr__(self) -> str:
        # Counts only: a state's repr may reach a log, its content may not.
        return (
            f"StudyState(events={self.event_count()}, rows={len(self.rows)}, "
            f"last_event_ms={self.last_event_ms}, evicted_at_ms={self.evicted_at_ms})"
        )

    @property
    def is_tombstone(self) -> bool:
        """Whether this is the marker of an evicted study."""
        return self.evicted_at_ms is not None

    def event_count(self) -> int:
        """Returns the number of distinct events applied."""
        return len(self.event_ids)

    def has_event(self, event_id: str) -> bool:
        """Returns whether an event with this id was applied (the dedup check)."""
        return event_id in self.event_ids


class RowFacts(Protocol):
    """What the derivation of a row reads (:mod:`streams.core.lineage.outcome`): a
    :class:`RowState`, or the joiner's draft of one while a batch adds to it."""

    @property
    def inferences(self) -> Sequence[InferenceFact]: ...
    @property
    def alerts(self) -> Sequence[AlertFact]: ...
    @property
    def alert_versions(self) -> Sequence[str]: ...
    @property
    def alert_inference_ids(self) -> Sequence[str]: ...
    @property
    def emitted(self) -> RowMeta | None: ...


class StudyFacts(Protocol):
    """What the derivation of a study's records reads: a :class:`StudyState`, or the
    joiner's draft of one, derived before the draft is frozen into a state."""

    @property
    def last_event_ms(self) -> int: ...
    @property
    def patient_ref(self) -> str | None: ...
    @property
    def accession_ref(self) -> str | None: ...
    @property
    def reports(self) -> Sequence[ReportFact]: ...
    @property
    def rows(self) -> Mapping[RowKey, RowFacts]: ...
