"""Confluent framing, schema ids in headers, evolution and every decode error reason."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest

from schemas.codec import HEADER_SCHEMA_ID, Codec
from schemas.errors import (
    EncodeError,
    OversizedError,
    RegistryUnavailableError,
    UndecodableError,
    UnknownSchemaError,
    ValidationFailedError,
)
from schemas.events import AlertChannel, AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.file_registry import FileSchemaRegistry
from schemas.records import DeadLetter, DeadLetterReason, Header, LineageRecord
from schemas.subjects import Schema, load_avsc
from tests.unit.schemas._doubles import DownRegistry, MemoryRegistry

INFERENCE = "imgov.events.v1.InferenceEvent"
ALERT = "imgov.events.v1.AlertEvent"


def _first(events: list[Event], kind: type[Any]) -> Any:
    return next(e for e in events if isinstance(e, kind))


def _framed(schema_id: int, schema: Schema, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def test_round_trip_of_every_event_type(codec: Codec, events: list[Event]) -> None:
    for kind in (InferenceEvent, AlertEvent, ReportEvent):
        event = _first(events, kind)
        assert codec.decode_event(codec.encode(event)) == event
        assert codec.decode(codec.encode(event), kind) == event


def test_round_trip_of_output_records(codec: Codec) -> None:
    letter = DeadLetter(
        reason=DeadLetterReason.UNDECODABLE,
        message="first byte 0x7b is not the Confluent magic byte",
        key=b"1.2.3",
        value=b"\x7b\x00\xff",
        headers=(Header(key="imgov.schema_id", value=b"42"), Header(key="empty")),
        source_topic="imaging.ai.inference.v1",
        source_partition=3,
        source_offset=2**40,
        received_at_ms=1_700_000_000_000,
    )
    assert codec.decode(codec.encode(letter), DeadLetter) == letter


def test_framing_is_magic_byte_then_big_endian_schema_id(
    codec: Codec, registry: FileSchemaRegistry, events: list[Event]
) -> None:
    encoded = codec.encode(_first(events, InferenceEvent))
    assert encoded[0] == 0
    assert int.from_bytes(encoded[1:5], "big") == registry.versions(INFERENCE)[-1].schema_id


def test_timestamps_decode_as_integer_milliseconds(codec: Codec, events: list[Event]) -> None:
    event = codec.decode_event(codec.encode(_first(events, InferenceEvent)))
    assert type(event.occurred_at_ms) is int
    assert isinstance(event, InferenceEvent) and type(event.completed_at_ms) is int


def test_schema_id_in_a_header_with_a_raw_body(codec: Codec, events: list[Event]) -> None:
    event = _first(events, AlertEvent)
    body = codec.encode(event, framed=False)
    header = codec.schema_id_header(AlertEvent)
    assert header[0] == HEADER_SCHEMA_ID and header[1].isdigit()
    assert codec.decode_event(body, [("traceparent", b"00-ab"), header]) == event
    assert codec.decode_event(body, {HEADER_SCHEMA_ID: header[1]}) == event


def test_a_header_body_is_raw_even_when_it_starts_with_a_zero_byte(
    registry: FileSchemaRegistry, events: list[Event]
) -> None:
    plain = Codec(registry)  # no value rules: an empty event_id encodes as a 0x00 first byte
    event = _first(events, InferenceEvent).model_copy(update={"event_id": ""})
    body = plain.encode(event, framed=False)
    assert body[0] == 0
    assert plain.decode_event(body, [plain.schema_id_header(InferenceEvent)]) == event


def test_each_schema_id_is_resolved_and_parsed_once(events: list[Event]) -> None:
    current = load_avsc()
    memory = MemoryRegistry(*current.values())
    codec = Codec(memory)
    encoded = [codec.encode(e) for e in events]
    for value in encoded * 3:
        codec.decode_event(value)
    assert memory.lookups == 3  # one per event type


def test_encode_a_mapping_validates_it_first(codec: Codec, events: list[Event]) -> None:
    event = _first(events, ReportEvent)
    assert codec.decode_event(codec.encode(event.model_dump(), ReportEvent)) == event
    with pytest.raises(EncodeError, match="ReportEvent"):
        codec.encode({"event_id": "x"}, ReportEvent)
    with pytest.raises(TypeError):
        codec.encode(event.model_dump())


# --- evolution ----------------------------------------------------------------------------


def test_the_registered_v1_inference_event_decodes_into_the_current_model(
    codec: Codec, registry: FileSchemaRegistry, events: list[Event]
) -> None:
    v1 = registry.versions(INFERENCE)[0]
    assert "manufacturer" not in {f["name"] for f in v1.schema["fields"]}
    event = _first(events, InferenceEvent)
    record = event.model_dump()
    del record["manufacturer"]
    decoded = codec.decode_event(_framed(v1.schema_id, v1.schema, record))
    assert decoded == event.model_copy(update={"manufacturer": None})


def _evolved(subject: str, change: Any) -> Schema:
    schema = copy.deepcopy(load_avsc()[subject])
    change(schema["fields"])
    return schema


def test_an_older_writer_with_promoted_types_and_extra_fields_resolves(
    events: list[Event],
) -> None:
    def older(fields: list[dict[str, Any]]) -> None:
        for field in fields:
            if field["name"] == "score":
                field["type"] = ["null", "float"]  # float -> double promotion
        fields[:] = [f for f in fields if f["name"] != "body_part"]
        fields.append({"name": "legacy_flag", "type": "boolean", "default": False})

    writer = _evolved(INFERENCE, older)
    memory = MemoryRegistry(*load_avsc().values())
    writer_id = memory.add(writer)
    event = _first(events, InferenceEvent).model_copy(update={"score": 0.5})
    record = {**event.model_dump(), "legacy_flag": True}
    decoded = Codec(memory).decode_event(_framed(writer_id, writer, record))
    assert decoded == event.model_copy(update={"body_part": None})


def test_an_unknown_alert_channel_from_a_newer_writer_reads_as_the_enum_default(
    events: list[Event],
) -> None:
    def newer(fields: list[dict[str, Any]]) -> None:
        for field in fields:
            if field["name"] == "channel":
                field["type"]["symbols"].append("SMS")

    writer = _evolved(ALERT, newer)
    memory = MemoryRegistry(*load_avsc().values())
    writer_id = memory.add(writer)
    record = {**_first(events, AlertEvent).model_dump(), "channel": "SMS"}
    decoded = Codec(memory).decode_event(_framed(writer_id, writer, record))
    assert isinstance(decoded, AlertEvent) and decoded.channel is AlertChannel.OTHER


def test_a_writer_the_reader_cannot_resolve_is_an_unknown_schema(events: list[Event]) -> None:
    def incompatible(fields: list[dict[str, Any]]) -> None:
        for field in fields:
            if field["name"] == "modality":
                field["type"] = "long"

    writer = _evolved(INFERENCE, incompatible)
    memory = MemoryRegistry(*load_avsc().values())
    writer_id = memory.add(writer)
    record = {**_first(events, InferenceEvent).model_dump(), "modality": 7}
    with pytest.raises(UnknownSchemaError, match="modality: writer type long cannot be read"):
        Codec(memory).decode_event(_framed(writer_id, writer, record))


# --- errors -------------------------------------------------------------------------------


def test_oversized_is_checked_before_anything_else(registry: FileSchemaRegistry) -> None:
    small = Codec(registry, max_message_bytes=10)
    with pytest.raises(OversizedError, match="11 bytes exceeds the limit of 10") as caught:
        small.decode_event(b"\xff" * 11)
    assert caught.value.reason is DeadLetterReason.OVERSIZED


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty message"),
        (b"\x00\x00\x01", "shorter than the 5-byte Confluent header"),
        (b'{"event_id": "x"}', "looks like JSON"),
        (b"\x01" + bytes(20), "GUID framing"),
    ],
)
def test_framing_errors_are_undecodable(codec: Codec, value: bytes, message: str) -> None:
    with pytest.raises(UndecodableError, match=message) as caught:
        codec.decode_event(value)
    assert caught.value.reason is DeadLetterReason.UNDECODABLE


def test_truncated_and_padded_bodies_are_undecodable(codec: Codec, events: list[Event]) -> None:
    encoded = codec.encode(_first(events, ReportEvent))
    with pytest.raises(UndecodableError, match="cannot be read with schema id") as caught:
        codec.decode_event(encoded[:-3])
    assert caught.value.schema_id == int.from_bytes(encoded[1:5], "big")
    with pytest.raises(UndecodableError, match="2 bytes left over"):
        codec.decode_event(encoded + b"\x00\x00")


def test_unknown_schema_ids(codec: Codec, events: list[Event]) -> None:
    body = codec.encode(_first(events, AlertEvent))[5:]
    with pytest.raises(UnknownSchemaError, match="schema id 7 is not in the schema registry"):
        codec.decode_event(b"\x00\x00\x00\x00\x07" + body)
    with pytest.raises(UnknownSchemaError, match="IMGOV_SCHEMA_REGISTRY_URL"):
        codec.decode_event(body, [(HEADER_SCHEMA_ID, b"7")])


def test_a_record_of_another_type_is_an_unknown_schema(codec: Codec, events: list[Event]) -> None:
    lineage = LineageRecord.model_validate(
        {
            "site_id": "s",
            "study_uid": "1.2",
            "algorithm_name": "a",
            "finding_code": "ICH",
            "outcome": "AWAITING_REPORT",
            "completeness": "OPEN",
            "revision": 1,
            "updated_at_ms": 1_700_000_000_000,
            "record_hash": "h",
        }
    )
    with pytest.raises(UnknownSchemaError, match="LineageRecord, not an input event"):
        codec.decode_event(codec.encode(lineage))
    with pytest.raises(UnknownSchemaError, match=r"is imgov\.events\.v1\.AlertEvent, not"):
        codec.decode(codec.encode(_first(events, AlertEvent)), InferenceEvent)


def test_value_rules_run_only_with_a_validator(
    codec: Codec, registry: FileSchemaRegistry, events: list[Event]
) -> None:
    bad = _first(events, InferenceEvent).model_copy(update={"score": 1.7})
    encoded = codec.encode(bad)
    with pytest.raises(ValidationFailedError, match=r"score = 1.7 is outside \[0, 1\]") as caught:
        codec.decode_event(encoded)
    assert caught.value.field == "score"
    assert caught.value.reason is DeadLetterReason.VALIDATION_FAILED
    with pytest.raises(ValidationFailedError):
        codec.decode(encoded, InferenceEvent)
    assert Codec(registry).decode_event(encoded) == bad


def test_an_unreachable_registry_is_not_a_bad_message(events: list[Event]) -> None:
    codec = Codec(DownRegistry(*load_avsc().values()))
    body = codec.encode(_first(events, AlertEvent))[5:]
    with pytest.raises(RegistryUnavailableError):
        codec.decode_event(b"\x00\x00\x00\x00\x09" + body)
