"""Hypothesis strategies for output records, within the ranges of the audit columns."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from hypothesis import strategies as st

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    LabelMethod,
    ReportStatus,
)
from schemas.records import Completeness, LineageRecord, Outcome, ReportLabel

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
TEXT = st.text(max_size=12)
# Finite floats: scores and thresholds. -0.0 included on purpose (a sign JSON can lose).
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _enum(kind: type[StrEnum]) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(kind))


_OPTIONAL_ENUMS: dict[str, type[StrEnum]] = {
    "inference_status": InferenceStatus,
    "ai_result": InferenceResult,
    "alert_final_state": AlertState,
    "alert_channel": AlertChannel,
    "report_status": ReportStatus,
    "report_label": ReportLabel,
    "label_method": LabelMethod,
}


def lineage_records() -> st.SearchStrategy[LineageRecord]:
    """Any LineageRecord the lineage_history columns can hold."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in LineageRecord.model_fields.items():
        annotation = str(info.annotation)
        if name in _OPTIONAL_ENUMS:
            fields[name] = _optional(_enum(_OPTIONAL_ENUMS[name]))
        elif name == "outcome":
            fields[name] = _enum(Outcome)
        elif name == "completeness":
            fields[name] = _enum(Completeness)
        elif name == "event_ids":
            fields[name] = st.lists(TEXT, max_size=4).map(tuple)
        elif name in {"revision", "addendum_count"}:
            fields[name] = UINT32.filter(lambda v: v > 0) if name == "revision" else UINT32
        elif annotation == "<class 'bool'>":
            fields[name] = st.booleans()
        elif annotation == "<class 'int'>":
            fields[name] = INT64
        elif annotation == "int | None":
            fields[name] = _optional(INT64)
        elif annotation == "float | None":
            fields[name] = _optional(FLOATS)
        elif annotation == "<class 'str'>":
            fields[name] = TEXT
        elif annotation == "str | None":
            fields[name] = _optional(TEXT)
        else:  # pragma: no cover - a new field type needs a strategy
            raise AssertionError(f"no strategy for LineageRecord.{name}: {annotation}")
    return st.fixed_dictionaries(fields).map(lambda values: LineageRecord(**values))
