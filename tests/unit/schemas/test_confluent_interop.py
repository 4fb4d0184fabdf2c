"""Interoperability with a peer implementation: confluent-kafka's Avro serde.

Both sides share confluent-kafka's in-memory registry (``mock://``); imgov sees it through
a small adapter implementing the ``SchemaRegistry`` protocol, as it would see a real
registry through ``HttpSchemaRegistry``. Subjects are record names on both sides.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    RegisteredSchema as ConfluentRegisteredSchema,
)
from confluent_kafka.schema_registry import (
    Schema as ConfluentSchema,
)
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.codec import SUBJECTS_BY_MODEL, Codec
from schemas.errors import SchemaNotFoundError
from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.subjects import RegisteredSchema, Schema, load_avsc
from schemas.validation import EventValidator

TOPICS = {
    InferenceEvent: "imaging.ai.inference.v1",
    AlertEvent: "imaging.ai.alert.v1",
    ReportEvent: "imaging.report.v1",
}


class ConfluentClientRegistry:
    """imgov's registry protocol over a confluent-kafka ``SchemaRegistryClient``."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client

    def id_for(self, subject: str, schema: Schema) -> int:
        try:
            found = self._client.lookup_schema(subject, ConfluentSchema(json.dumps(schema), "AVRO"))
        except SchemaRegistryError as exc:
            raise SchemaNotFoundError(str(exc)) from exc
        assert found.schema_id is not None
        return found.schema_id

    def schema_by_id(self, schema_id: int) -> Schema:
        try:
            found = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            raise SchemaNotFoundError(str(exc)) from exc
        assert found.schema_str is not None
        schema: Schema = json.loads(found.schema_str)
        return schema

    def versions(self, subject: str) -> list[RegisteredSchema]:
        found: list[ConfluentRegisteredSchema] = [
            self._client.get_version(subject, v) for v in self._client.get_versions(subject)
        ]
        return [
            RegisteredSchema(subject, int(r.version or 0), int(r.schema_id or 0),
                             json.loads(r.schema.schema_str or "{}"))
            for r in found
        ]  # fmt: skip

    def subjects(self) -> list[str]:
        return sorted(self._client.get_subjects())


@pytest.fixture()
def client() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://imgov-interop"})


def _serializer(client: SchemaRegistryClient, model: type[Any]) -> AvroSerializer:
    schema = load_avsc()[SUBJECTS_BY_MODEL[model]]
    return AvroSerializer(
        client,
        json.dumps(schema),
        conf={"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy},
    )


def _millis(value: Any) -> Any:
    # confluent-kafka's deserializer turns timestamp-millis into datetimes.
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, list):
        return [_millis(v) for v in value]
    if isinstance(value, dict):
        return {k: _millis(v) for k, v in value.items()}
    return value


def test_confluent_serializer_bytes_decode_through_imgov(
    client: SchemaRegistryClient, events: list[Event], validator: EventValidator
) -> None:
    serializers = {model: _serializer(client, model) for model in TOPICS}
    codec = Codec(ConfluentClientRegistry(client), validator=validator)
    for event in events[:60]:
        model = type(event)
        context = SerializationContext(TOPICS[model], MessageField.VALUE)
        value = serializers[model](event.model_dump(mode="json"), context)
        assert value is not None and value[0] == 0
        assert codec.decode_event(value) == event
    assert set(client.get_subjects()) == {SUBJECTS_BY_MODEL[m] for m in TOPICS}


def test_imgov_bytes_decode_through_the_confluent_deserializer(
    client: SchemaRegistryClient, events: list[Event]
) -> None:
    current = load_avsc()
    for model in TOPICS:
        subject = SUBJECTS_BY_MODEL[model]
        client.register_schema(subject, ConfluentSchema(json.dumps(current[subject]), "AVRO"))
    codec = Codec(ConfluentClientRegistry(client))
    deserializer = AvroDeserializer(client)
    for event in events[:60]:
        context = SerializationContext(TOPICS[type(event)], MessageField.VALUE)
        decoded = deserializer(codec.encode(event), context)
        assert _millis(decoded) == event.model_dump(mode="json")


def test_an_older_confluent_writer_is_read_by_the_current_imgov_reader(
    client: SchemaRegistryClient, events: list[Event], validator: EventValidator
) -> None:
    # The evolution path across implementations: confluent writes InferenceEvent v1.
    subject = SUBJECTS_BY_MODEL[InferenceEvent]
    v1 = load_avsc()[subject]
    v1 = dict(v1, fields=[f for f in v1["fields"] if f["name"] != "manufacturer"])
    serializer = AvroSerializer(
        client, json.dumps(v1),
        conf={"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy},
    )  # fmt: skip
    codec = Codec(ConfluentClientRegistry(client), validator=validator)
    event = next(e for e in events if isinstance(e, InferenceEvent) and e.manufacturer)
    record = event.model_dump(mode="json")
    del record["manufacturer"]
    value = serializer(record, SerializationContext(TOPICS[InferenceEvent], MessageField.VALUE))
    assert value is not None
    assert codec.decode_event(value) == event.model_copy(update={"manufacturer": None})
