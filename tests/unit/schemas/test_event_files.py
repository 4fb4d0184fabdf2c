"""JSON Lines and Avro container files: round trips, determinism, bad lines, evolution."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import fastavro
import pytest

from schemas.errors import UndecodableError
from schemas.events import EVENT_MODELS, AlertEvent, Event, InferenceEvent
from schemas.file_registry import FileSchemaRegistry
from schemas.files import (
    RejectedInput,
    event_to_json_line,
    read_avro,
    read_events,
    read_jsonl,
    write_avro,
    write_events,
    write_jsonl,
)
from schemas.records import DeadLetterReason
from schemas.subjects import load_avsc
from schemas.validation import EventValidator

ORDER = (
    "imgov.events.v1.InferenceEvent",
    "imgov.events.v1.AlertEvent",
    "imgov.events.v1.ReportEvent",
)


def _jsonl(events: list[Event]) -> bytes:
    buffer = io.BytesIO()
    write_jsonl(buffer, events)
    return buffer.getvalue()


def test_jsonl_round_trip_keeps_order_and_values(events: list[Event]) -> None:
    assert list(read_jsonl(io.BytesIO(_jsonl(events)))) == events


def test_jsonl_is_byte_identical_for_the_same_events(events: list[Event], tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(first, events) == len(events)
    write_jsonl(second, [e.model_copy() for e in events])
    assert first.read_bytes() == second.read_bytes() == _jsonl(events)


def test_jsonl_line_layout(events: list[Event]) -> None:
    for event in events[:50]:
        line = event_to_json_line(event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b", " not in line
        keys = list(json.loads(line))
        assert keys == ["event_type", *type(event).model_fields]
        assert json.loads(line)["event_type"] == event.event_type.value


def test_jsonl_slow_path_reads_any_key_order(events: list[Event]) -> None:
    lines = []
    for event in events[:30]:
        data = json.loads(event_to_json_line(event))
        data["event_type"] = data.pop("event_type")  # last, not first
        lines.append(json.dumps(dict(reversed(data.items()))).encode())
    assert list(read_jsonl(io.BytesIO(b"\r\n".join(lines)))) == events[:30]


def test_bad_lines_are_rejected_with_their_number_and_bytes(
    events: list[Event], validator: EventValidator
) -> None:
    good = [event_to_json_line(e) for e in events[:3]]
    bad_score = event_to_json_line(events[0].model_copy(update={"score": 1.5}))
    data = good[0] + b"{oops\n" + b"\n" + good[1] + b'{"event_type":"x"}\n' + bad_score + good[2]
    results = list(read_jsonl(io.BytesIO(data), validator=validator))
    assert results[0] == events[0] and results[2] == events[1] and results[-1] == events[2]
    rejected = [r for r in results if isinstance(r, RejectedInput)]
    assert [(r.position, r.reason) for r in rejected] == [
        (2, DeadLetterReason.UNDECODABLE),
        (5, DeadLetterReason.UNKNOWN_SCHEMA),
        (6, DeadLetterReason.VALIDATION_FAILED),
    ]
    assert rejected[0].raw == b"{oops"
    assert rejected[2].raw == bad_score.rstrip(b"\n")


def test_type_errors_from_the_fast_path_are_classified_like_the_slow_path(
    events: list[Event],
) -> None:
    line = event_to_json_line(events[0]).replace(b'"modality":"CT"', b'"modality":7')
    (result,) = read_jsonl(io.BytesIO(line))
    assert isinstance(result, RejectedInput)
    assert result.reason is DeadLetterReason.VALIDATION_FAILED and result.error.field == "modality"
    truncated = event_to_json_line(events[0])[:-10]
    (result,) = read_jsonl(io.BytesIO(truncated))
    assert isinstance(result, RejectedInput) and result.reason is DeadLetterReason.UNDECODABLE


def test_oversized_lines(events: list[Event]) -> None:
    (result,) = read_jsonl(io.BytesIO(event_to_json_line(events[0])), max_line_bytes=20)
    assert isinstance(result, RejectedInput) and result.reason is DeadLetterReason.OVERSIZED


def test_direct_identifiers_never_appear_in_rejections(events: list[Event]) -> None:
    inference = next(e for e in events if isinstance(e, InferenceEvent))
    data = json.loads(event_to_json_line(inference))
    data.update(patient_id=31337, accession_number={"n": 31337}, score="x")
    (result,) = read_jsonl(io.BytesIO(json.dumps(data).encode()))
    assert isinstance(result, RejectedInput) and "31337" not in str(result.error)


# --- Avro container files -----------------------------------------------------------------


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_avro_round_trip_keeps_the_mixed_order(events: list[Event], codec: str) -> None:
    buffer = io.BytesIO()
    assert write_avro(buffer, events, codec=codec) == len(events)
    decoded = list(read_avro(io.BytesIO(buffer.getvalue())))
    assert decoded == events
    assert all(type(e.occurred_at_ms) is int for e in decoded if not isinstance(e, RejectedInput))


def test_avro_files_are_deterministic_and_readable_by_fastavro(
    events: list[Event], tmp_path: Path
) -> None:
    first, second = tmp_path / "a.avro", tmp_path / "b.avro"
    write_avro(first, events)
    write_avro(second, events)
    assert first.read_bytes() == second.read_bytes()
    with first.open("rb") as stream:
        names = [name for name, _ in fastavro.reader(stream, return_record_name=True)]
    assert names == [ORDER[list(EVENT_MODELS.values()).index(type(e))] for e in events]


def _legacy_avro(events: list[Event], registry: FileSchemaRegistry) -> bytes:
    """A file written with InferenceEvent v1 (no manufacturer) in the union."""
    current = load_avsc()
    v1 = registry.versions(ORDER[0])[0].schema
    union = [v1, current[ORDER[1]], current[ORDER[2]]]
    records = []
    for event in events:
        record = event.model_dump()
        if isinstance(event, InferenceEvent):
            del record["manufacturer"]
        records.append((ORDER[list(EVENT_MODELS.values()).index(type(event))], record))
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(union), records, codec="deflate")
    return buffer.getvalue()


def test_avro_files_of_an_older_schema_read_into_the_current_one(
    events: list[Event], registry: FileSchemaRegistry
) -> None:
    decoded = list(read_avro(io.BytesIO(_legacy_avro(events, registry))))
    expected = [
        e.model_copy(update={"manufacturer": None}) if isinstance(e, InferenceEvent) else e
        for e in events
    ]
    assert decoded == expected


def test_a_single_type_avro_file_is_read_too(events: list[Event]) -> None:
    inferences = [e for e in events if isinstance(e, InferenceEvent)]
    buffer = io.BytesIO()
    schema = fastavro.parse_schema(load_avsc()[ORDER[0]])
    fastavro.writer(buffer, schema, [e.model_dump() for e in inferences])
    assert list(read_avro(io.BytesIO(buffer.getvalue()))) == inferences


def test_invalid_records_in_avro_files_are_rejected_and_reading_goes_on(
    events: list[Event], validator: EventValidator
) -> None:
    broken = list(events[:10])
    broken[3] = broken[3].model_copy(update={"study_uid": ""})
    buffer = io.BytesIO()
    write_avro(buffer, broken)
    results = list(read_avro(io.BytesIO(buffer.getvalue()), validator=validator))
    assert len(results) == 10
    rejected = results[3]
    assert isinstance(rejected, RejectedInput) and rejected.position == 4
    assert rejected.reason is DeadLetterReason.VALIDATION_FAILED and rejected.raw
    assert results[:3] + results[4:] == events[:3] + events[4:10]


def test_a_truncated_avro_file_ends_with_one_rejection(events: list[Event]) -> None:
    buffer = io.BytesIO()
    write_avro(buffer, events)
    results = list(read_avro(io.BytesIO(buffer.getvalue()[:-40])))
    *good, last = results
    assert good == events[: len(good)]
    assert isinstance(last, RejectedInput) and last.reason is DeadLetterReason.UNDECODABLE


def test_not_an_avro_file(events: list[Event]) -> None:
    with pytest.raises(UndecodableError, match="not an Avro container file"):
        list(read_avro(io.BytesIO(_jsonl(events[:2]))))


def test_files_by_suffix(events: list[Event], tmp_path: Path) -> None:
    for name in ("events.jsonl", "events.avro"):
        path = tmp_path / name
        assert write_events(path, events) == len(events)
        assert list(read_events(path)) == events
    assert (tmp_path / "events.avro").read_bytes()[:4] == b"Obj\x01"


def test_records_of_an_unreadable_branch_are_rejected_and_the_rest_read(
    events: list[Event],
) -> None:
    current = load_avsc()
    alert = copy.deepcopy(current[ORDER[1]])
    for field in alert["fields"]:
        if field["name"] == "alert_id":
            field["type"] = "long"  # cannot be read as the current string
    union = [current[ORDER[0]], alert, current[ORDER[2]]]
    records = []
    for event in events[:40]:
        record = event.model_dump()
        if isinstance(event, AlertEvent):
            record["alert_id"] = 7
        records.append((ORDER[list(EVENT_MODELS.values()).index(type(event))], record))
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(union), records)
    results = list(read_avro(io.BytesIO(buffer.getvalue())))
    assert len(results) == 40
    for event, result in zip(events[:40], results, strict=True):
        if isinstance(event, AlertEvent):
            assert isinstance(result, RejectedInput)
            assert result.reason is DeadLetterReason.UNKNOWN_SCHEMA
            assert "alert_id: writer type long" in str(result.error)
        else:
            assert result == event
