"""Property: any event the models accept survives every encoding unchanged."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Event,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    Priority,
    ReportEvent,
    ReportStatus,
)
from schemas.file_registry import FileSchemaRegistry
from schemas.files import read_avro, read_jsonl, write_avro, write_jsonl

text = st.text(max_size=12)
maybe_text = st.none() | text
millis = st.integers(min_value=-(2**62), max_value=2**62)
maybe_millis = st.none() | millis
maybe_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)


def _common() -> dict[str, Any]:
    return {"event_id": text, "occurred_at_ms": millis, "site_id": text, "study_uid": text}


inferences = st.fixed_dictionaries(
    {
        **_common(),
        "accession_number": maybe_text, "patient_id": maybe_text, "modality": text,
        "body_part": maybe_text, "manufacturer": maybe_text, "algorithm_name": text,
        "algorithm_version": text, "finding_code": text,
        "status": st.sampled_from(InferenceStatus), "failure_reason": maybe_text,
        "score": maybe_float, "threshold": maybe_float,
        "result": st.sampled_from(InferenceResult), "study_available_at_ms": maybe_millis,
        "started_at_ms": maybe_millis, "completed_at_ms": maybe_millis,
    }
).map(InferenceEvent.model_validate)  # fmt: skip
alerts = st.fixed_dictionaries(
    {
        **_common(),
        "alert_id": text, "inference_event_id": maybe_text, "algorithm_name": text,
        "algorithm_version": text, "finding_code": text, "state": st.sampled_from(AlertState),
        "channel": st.sampled_from(AlertChannel), "recipient_role": maybe_text,
        "recipient_id": maybe_text, "priority_before": st.none() | st.sampled_from(Priority),
        "priority_after": st.none() | st.sampled_from(Priority), "dismiss_reason": maybe_text,
    }
).map(AlertEvent.model_validate)  # fmt: skip
findings = st.fixed_dictionaries(
    {"finding_code": text, "label": st.sampled_from(Label),
     "label_method": st.sampled_from(LabelMethod)}
)  # fmt: skip
reports = st.fixed_dictionaries(
    {
        **_common(),
        "accession_number": maybe_text, "patient_id": maybe_text, "modality": maybe_text,
        "body_part": maybe_text, "procedure_code": maybe_text, "report_id": text,
        "parent_report_id": maybe_text, "status": st.sampled_from(ReportStatus),
        "hl7_result_status": maybe_text, "interpreter_id": maybe_text,
        "exam_completed_at_ms": maybe_millis, "findings": st.lists(findings, max_size=3),
        "critical_result_communicated_at_ms": maybe_millis,
    }
).map(ReportEvent.model_validate)  # fmt: skip
any_events = st.lists(inferences | alerts | reports, max_size=8)

CODEC = Codec(FileSchemaRegistry())
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(any_events)
def test_wire_round_trip(events: list[Event]) -> None:
    assert [CODEC.decode_event(CODEC.encode(e)) for e in events] == events


@FAST
@given(any_events)
def test_file_round_trips(events: list[Event]) -> None:
    jsonl, avro = io.BytesIO(), io.BytesIO()
    write_jsonl(jsonl, events)
    write_avro(avro, events)
    assert list(read_jsonl(io.BytesIO(jsonl.getvalue()))) == events
    assert list(read_avro(io.BytesIO(avro.getvalue()))) == events
