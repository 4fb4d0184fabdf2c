"""Confluent-framed Avro through the real broker, across the two Python clients.

The live pipeline consumes with aiokafka (Faust) while tools and tests often produce
with kafka-python: a record written by one must read back byte-identical in the other,
with its key, headers and partition. Runs against the broker of infra/kafka/kafka.sh,
on a fresh topic shaped like imaging.ai.inference.v1 (key = study_uid); the real topics
are created, and checked, through ``imgov topics create``.
"""

from __future__ import annotations

import io
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as AioTopicPartition
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from typer.testing import CliRunner

from streams.cli.main import app
from streams.runtime.topic_admin import load_topics
from streams.topics import INFERENCE_TOPIC, INPUT_TOPICS

pytestmark = pytest.mark.kafka

# A deliberately small stand-in for the real contract (schemas/avro): this test is about
# transport and framing, not about the event model.
_SCHEMA_ID = 4242
_SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "InferenceProbe",
        "namespace": "imgov.tests",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "study_uid", "type": "string"},
            {"name": "model_id", "type": "string"},
            {"name": "score", "type": "double"},
            {"name": "positive", "type": "boolean"},
            {"name": "event_time_ms", "type": "long"},
            {"name": "findings", "type": {"type": "array", "items": "string"}},
            {"name": "site_id", "type": ["null", "string"], "default": None},
        ],
    }
)


def _encode(record: dict[str, Any]) -> bytes:
    """Confluent wire format: magic 0, 4-byte big-endian schema id, Avro binary."""
    body = io.BytesIO()
    schemaless_writer(body, _SCHEMA, record)
    return b"\x00" + struct.pack(">I", _SCHEMA_ID) + body.getvalue()


def _decode(data: bytes) -> dict[str, Any]:
    assert data[:1] == b"\x00", "not Confluent framed"
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert schema_id == _SCHEMA_ID
    return schemaless_reader(io.BytesIO(data[5:]), _SCHEMA, None)  # type: ignore[return-value]


def _inference(study_uid: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4()}",
        "study_uid": study_uid,
        "model_id": "cxr-triage@2.3.1",
        "score": 0.25 + n / 100,
        "positive": n % 2 == 0,
        "event_time_ms": 1_767_225_600_000 + n,
        "findings": ["nodule", "effusion"][: n % 3],
        "site_id": None if n % 2 else "site-a",
    }


def test_topics_create_cli_is_idempotent(kafka_bootstrap: str) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert again.exit_code == 0, again.output
    assert f"0 created, {len(load_topics().topics)} already there" in again.output

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        partitions = {t: consumer.partitions_for_topic(t) for t in INPUT_TOPICS}
    finally:
        consumer.close()
    expected = load_topics().get(INFERENCE_TOPIC).partitions
    assert {t: len(p or ()) for t, p in partitions.items()} == dict.fromkeys(INPUT_TOPICS, expected)


@pytest.fixture
def inference_topic(kafka_topic_factory: Callable[..., str]) -> str:
    """A fresh topic with the partitions and configs of imaging.ai.inference.v1.

    Not the shared topic itself: probe records there would reach whatever pipeline
    or demo reads the inputs from the earliest offset on this broker.
    """
    spec = load_topics().get(INFERENCE_TOPIC)
    return kafka_topic_factory(f"{INFERENCE_TOPIC}.it", spec.partitions, spec.config)


async def test_aiokafka_to_kafka_python(kafka_bootstrap: str, inference_topic: str) -> None:
    study_uids = [f"1.2.826.0.1.{uuid.uuid4().int % 10**12}" for _ in range(5)]
    sent = [_inference(uid, n) for n, uid in enumerate(study_uids)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        placed = [
            await producer.send_and_wait(
                inference_topic,
                key=r["study_uid"].encode(),
                value=_encode(r),
                headers=[("imgov-test", b"aio->kp")],
            )
            for r in sent
        ]
    finally:
        await producer.stop()

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    received = []
    try:
        for meta in placed:
            tp = TopicPartition(inference_topic, meta.partition)
            consumer.assign([tp])
            consumer.seek(tp, meta.offset)
            received.append(_poll_one(consumer, tp))
    finally:
        consumer.close()

    for record, meta, msg in zip(sent, placed, received, strict=True):
        assert msg.offset == meta.offset
        assert msg.key == record["study_uid"].encode()
        assert _decode(msg.value) == record
        assert list(msg.headers) == [("imgov-test", b"aio->kp")]


async def test_kafka_python_to_aiokafka(kafka_bootstrap: str, inference_topic: str) -> None:
    study_uids = [f"1.2.826.0.2.{uuid.uuid4().int % 10**12}" for _ in range(5)]
    sent = [_inference(uid, n) for n, uid in enumerate(study_uids)]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        placed = [
            producer.send(
                inference_topic,
                key=r["study_uid"].encode(),
                value=_encode(r),
                headers=[("imgov-test", b"kp->aio")],
            ).get(timeout=30)
            for r in sent
        ]
    finally:
        producer.close()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    received = []
    try:
        for meta in placed:
            tp = AioTopicPartition(inference_topic, meta.partition)
            consumer.assign([tp])
            consumer.seek(tp, meta.offset)
            received.append(await consumer.getone(tp))
    finally:
        await consumer.stop()

    for record, meta, msg in zip(sent, placed, received, strict=True):
        assert msg.offset == meta.offset
        assert msg.key == record["study_uid"].encode()
        assert _decode(msg.value) == record
        assert list(msg.headers) == [("imgov-test", b"kp->aio")]


async def test_both_clients_place_a_study_on_the_same_partition(
    kafka_bootstrap: str, inference_topic: str
) -> None:
    """Co-partitioning needs every producer to map study_uid to the same partition."""
    keys = [f"1.2.826.0.3.{i}".encode() for i in range(40)]

    aio = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await aio.start()
    try:
        aio_partitions = [
            (await aio.send_and_wait(inference_topic, key=k, value=b"p")).partition for k in keys
        ]
    finally:
        await aio.stop()

    kp = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        kp_partitions = [
            kp.send(inference_topic, key=k, value=b"p").get(timeout=30).partition for k in keys
        ]
    finally:
        kp.close()

    assert aio_partitions == kp_partitions
    assert len(set(aio_partitions)) > 1, "keys should spread over the partitions"


def _poll_one(consumer: KafkaConsumer, tp: TopicPartition, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500, max_records=1)
        if batch.get(tp):
            return batch[tp][0]
    raise AssertionError(f"no record from {tp.topic}[{tp.partition}] within {timeout_s}s")
