"""Ground truth of a simulated study: what really was there and what each party said.

One ``StudyTruth`` per study, written by ``imgov simulate --truth FILE`` as JSON Lines
(``to_json_line``: fields in declaration order, enums as their values). Tests and
benchmarks compare the pipeline's KPIs against it.

Immutable named tuples rather than pydantic models: a run builds one per study and
nothing here needs validating, and building them was a fifth of the generation time.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    Label,
    ReportStatus,
)

__all__ = ["AlgorithmTruth", "StudyTruth"]


class AlgorithmTruth(NamedTuple):
    """One eligible algorithm on one study."""

    algorithm_name: str
    algorithm_version: str
    finding_code: str
    present: bool
    """The true state of the finding (the reference standard, before report errors)."""
    inference_status: InferenceStatus | None
    """None when the study never reached the algorithm."""
    ai_result: InferenceResult | None
    score: float | None
    threshold: float
    drifted: bool
    """A drift scenario was active for this algorithm at this site on this day."""
    alert_channel: AlertChannel | None = None
    alert_final_state: AlertState | None = None
    final_label: Label | None = None
    """The label of the final report (NLP errors included); None without a report."""
    addendum_label: Label | None = None
    """The label after an addendum, when the study has one."""


class StudyTruth(NamedTuple):
    """One simulated study."""

    site_id: str
    study_uid: str
    day: int
    exam: str
    modality: str
    body_part: str
    procedure_code: str
    manufacturer: str
    scanner_changed: bool
    accession_number: str
    patient_id: str
    exam_completed_at_ms: int
    report_final_at_ms: int | None
    addendum_status: ReportStatus | None
    algorithms: tuple[AlgorithmTruth, ...]
    """Every algorithm eligible for the exam; empty for exams no algorithm reads."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums are ``str`` subclasses and serialise as their value)."""
        data = self._asdict()
        data["algorithms"] = [a._asdict() for a in self.algorithms]
        return data

    def to_json_line(self) -> str:
        """One deterministic JSON line, newline included."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False) + "\n"
