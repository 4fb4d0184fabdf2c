"""Value rules beyond Avro types, with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.errors import ValidationFailedError
from schemas.events import AlertEvent, Event, Finding, InferenceEvent, ReportEvent
from schemas.validation import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    MIN_TIMESTAMP_MS,
    EventValidator,
    validation_failed_from_pydantic,
)
from tests.unit.schemas.conftest import NOW_MS


def _first(events: list[Event], kind: type[Any]) -> Any:
    return next(e for e in events if isinstance(e, kind))


def _rejects(validator: EventValidator, event: Event, field: str, match: str | None = None) -> str:
    with pytest.raises(ValidationFailedError, match=match) as caught:
        validator.validate(event)
    assert caught.value.field == field
    return str(caught.value)


def test_valid_events_pass_unchanged(validator: EventValidator, events: list[Event]) -> None:
    for event in events:
        assert validator.validate(event) is event


@pytest.mark.parametrize("field", ["event_id", "site_id", "study_uid"])
@pytest.mark.parametrize("kind", [InferenceEvent, AlertEvent, ReportEvent])
def test_every_event_needs_its_identifiers(
    validator: EventValidator, events: list[Event], kind: type[Any], field: str
) -> None:
    for blank in ("", "  \t"):
        event = _first(events, kind).model_copy(update={field: blank})
        _rejects(validator, event, field, f"{kind.__name__}.{field} is empty")


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (InferenceEvent, "modality"),
        (InferenceEvent, "algorithm_name"),
        (InferenceEvent, "algorithm_version"),
        (InferenceEvent, "finding_code"),
        (AlertEvent, "alert_id"),
        (AlertEvent, "algorithm_name"),
        (AlertEvent, "algorithm_version"),
        (AlertEvent, "finding_code"),
        (ReportEvent, "report_id"),
    ],
)
def test_type_specific_identifiers(
    validator: EventValidator, events: list[Event], kind: type[Any], field: str
) -> None:
    _rejects(validator, _first(events, kind).model_copy(update={field: ""}), field)


def test_findings_need_a_code(validator: EventValidator, events: list[Event]) -> None:
    report = _first(events, ReportEvent)
    blank = Finding(finding_code="", label="ABSENT", label_method="NLP")
    event = report.model_copy(update={"findings": (*report.findings, blank)})
    _rejects(validator, event, "findings[1].finding_code")


@pytest.mark.parametrize("score", [-0.0001, 1.0001, 1.7, float("nan"), float("inf")])
def test_score_and_threshold_lie_in_the_unit_interval(
    validator: EventValidator, events: list[Event], score: float
) -> None:
    inference = _first(events, InferenceEvent)
    _rejects(validator, inference.model_copy(update={"score": score}), "score", "outside")
    _rejects(validator, inference.model_copy(update={"threshold": score}), "threshold")


@pytest.mark.parametrize("score", [0.0, 1.0, None])
def test_unit_interval_bounds_and_absence_pass(
    validator: EventValidator, events: list[Event], score: float | None
) -> None:
    event = _first(events, InferenceEvent).model_copy(update={"score": score, "threshold": score})
    assert validator.validate(event) == event


def test_timestamp_bounds(validator: EventValidator, events: list[Event]) -> None:
    inference = _first(events, InferenceEvent)
    latest = NOW_MS + DEFAULT_MAX_CLOCK_SKEW_MS
    for ok in (MIN_TIMESTAMP_MS, latest):
        assert validator.validate(inference.model_copy(update={"started_at_ms": ok}))
    message = _rejects(
        validator, inference.model_copy(update={"started_at_ms": MIN_TIMESTAMP_MS - 1}),
        "started_at_ms", "is before 2000-01-01T00:00:00.000Z",
    )  # fmt: skip
    assert "1999-12-31T23:59:59.999Z" in message
    message = _rejects(
        validator, inference.model_copy(update={"completed_at_ms": latest + 1}), "completed_at_ms"
    )
    assert "15.0 min ahead of the clock" in message and "time zone" in message


def test_timestamp_hints_for_seconds_and_microseconds(
    validator: EventValidator, events: list[Event]
) -> None:
    alert = _first(events, AlertEvent)
    seconds = alert.model_copy(update={"occurred_at_ms": NOW_MS // 1000})
    assert "epoch seconds" in _rejects(validator, seconds, "occurred_at_ms")
    micros = alert.model_copy(update={"occurred_at_ms": NOW_MS * 1000})
    assert "epoch microseconds" in _rejects(validator, micros, "occurred_at_ms")


def test_clock_is_injected_and_skew_configurable(events: list[Event]) -> None:
    calls: list[int] = []

    def clock() -> int:
        calls.append(1)
        return NOW_MS

    strict = EventValidator(clock, max_clock_skew_ms=0)
    inference = _first(events, InferenceEvent).model_copy(update={"completed_at_ms": NOW_MS + 1})
    # Below a minute a duration reads in seconds (schemas.units.format_duration).
    with pytest.raises(ValidationFailedError, match=r"allowed skew of 0 s"):
        strict.validate(inference)
    assert calls == [1]
    assert strict.validate(inference, now_ms=NOW_MS + 1) == inference
    assert calls == [1]  # a given now_ms spares the clock
    with pytest.raises(ValueError):
        EventValidator(clock, max_clock_skew_ms=-1)


def test_every_problem_is_named_and_the_first_is_the_field(
    validator: EventValidator, events: list[Event]
) -> None:
    event = _first(events, InferenceEvent).model_copy(
        update={"study_uid": "", "score": 3.0, "occurred_at_ms": 0}
    )
    message = _rejects(validator, event, "study_uid")
    assert "score = 3.0" in message and "occurred_at_ms = 0" in message


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (InferenceEvent, "patient_id"),
        (InferenceEvent, "accession_number"),
        (AlertEvent, "inference_event_id"),
        (AlertEvent, "recipient_id"),
        (ReportEvent, "interpreter_id"),
        (ReportEvent, "parent_report_id"),
    ],
)
def test_blank_optional_references_become_absent(
    validator: EventValidator, events: list[Event], kind: type[Any], field: str
) -> None:
    event = _first(events, kind).model_copy(update={field: " "})
    cleaned = validator.validate(event)
    assert getattr(cleaned, field) is None
    assert cleaned == event.model_copy(update={field: None})


def test_pydantic_errors_never_echo_direct_identifiers() -> None:
    secret = 987654321
    data = {
        "event_id": "e",
        "occurred_at_ms": NOW_MS,
        "site_id": "s",
        "study_uid": "1.2",
        "patient_id": secret,
        "accession_number": [secret],
        "modality": "CT",
        "algorithm_name": "a",
        "algorithm_version": "1",
        "finding_code": "ICH",
        "status": "DONE",
        "result": "POSITIVE",
        "score": "high",
    }
    with pytest.raises(ValidationError) as caught:
        InferenceEvent.model_validate(data)
    error = validation_failed_from_pydantic(InferenceEvent, caught.value, schema_id=12)
    message = str(error)
    assert str(secret) not in message
    assert "InferenceEvent.patient_id" in message and "InferenceEvent.accession_number" in message
    assert "(got 'DONE')" in message and "(got 'high')" in message
    assert error.field == "accession_number" and error.schema_id == 12
    assert message.endswith("(schema id 12)")


def test_missing_fields_do_not_echo_the_whole_record() -> None:
    with pytest.raises(ValidationError) as caught:
        InferenceEvent.model_validate({"event_id": "e", "patient_id": "SECRET-MRN"})
    message = str(validation_failed_from_pydantic(InferenceEvent, caught.value))
    assert "SECRET-MRN" not in message
    assert "InferenceEvent.occurred_at_ms: Field required" in message
    assert message.count(";") == 5 and message.endswith("and 4 more")  # 9 missing, 5 shown
