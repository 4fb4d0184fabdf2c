"""KafkaDelivery against a fake producer: topics, keys, values, provenance, failures.

The real broker is exercised by tests/integration/test_gateway_mllp.py; here the
producer is a stand-in that records what it is asked to send and resolves (or fails)
each acknowledgement as the test says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import streams.gateway.delivery as delivery_module
from schemas.codec import Codec
from schemas.errors import ImgovError
from schemas.events import ReportEvent
from schemas.file_registry import FileSchemaRegistry
from schemas.records import DeadLetter, DeadLetterReason, Header
from sinks.base import SinkError
from sinks.memory import MemorySink
from streams.gateway.delivery import (
    CONTROL_ID_HEADER,
    SOURCE_HEADER,
    DeliveryError,
    KafkaDelivery,
    provenance_headers,
)
from streams.gateway.hl7 import load_hl7_mapping, parse_message, report_events
from streams.topics import WorkerTopics

TWO_REPORTS = Path(__file__).parents[2] / "data" / "hl7" / "good" / "two_reports_v25.hl7"
CODEC = Codec(FileSchemaRegistry())
TOPICS = WorkerTopics.with_namespace("t1.")


def events() -> list[ReportEvent]:
    message = parse_message(TWO_REPORTS.read_bytes().replace(b"\n", b"\r"))
    return report_events(message, load_hl7_mapping())


class FakeProducer:
    """Records every send; ``outcome`` decides each acknowledgement."""

    def __init__(self, outcome: Any = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []
        self.outcome = outcome  # None: acknowledged; an exception: failed; "hang": never
        self.stopped = False

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key, list(headers or ())))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(self.outcome, BaseException):
            future.set_exception(self.outcome)
        elif self.outcome != "hang":
            future.set_result(None)
        return future

    async def stop(self) -> None:
        self.stopped = True


def letter() -> DeadLetter:
    return DeadLetter(
        reason=DeadLetterReason.UNDECODABLE,
        message="HL7 v2 over MLLP, mllp://127.0.0.1:5000: no MSH segment",
        value=b"hello",
        headers=tuple(
            Header(key=k, value=v) for k, v in provenance_headers("mllp://127.0.0.1:5000", None)
        ),
        received_at_ms=1_767_614_340_000,
    )


def test_the_interface_other_listeners_code_against() -> None:
    assert issubclass(DeliveryError, ImgovError)
    assert set(delivery_module.__all__) <= set(dir(delivery_module))


async def test_events_go_to_their_namespaced_topic_keyed_by_study_with_provenance() -> None:
    producer = FakeProducer()
    delivery = KafkaDelivery(producer, CODEC, TOPICS)
    sent_events = events()

    await delivery.deliver(sent_events, source="mllp://10.0.0.7:40112", control_id="G-0004")

    assert [(topic, key) for topic, _, key, _ in producer.sent] == [
        ("t1.imaging.report.v1", b"1.2.826.0.1.3680043.10.2.1004"),
        ("t1.imaging.report.v1", b"1.2.826.0.1.3680043.10.2.1004"),
    ]
    assert [CODEC.decode_event(value) for _, value, _, _ in producer.sent] == sent_events
    for _, _, _, headers in producer.sent:
        assert headers == [
            (SOURCE_HEADER, b"mllp://10.0.0.7:40112"),
            (CONTROL_ID_HEADER, b"G-0004"),
        ]


async def test_a_failed_acknowledgement_is_a_delivery_error() -> None:
    from aiokafka.errors import KafkaTimeoutError

    delivery = KafkaDelivery(FakeProducer(KafkaTimeoutError()), CODEC, TOPICS)
    with pytest.raises(DeliveryError, match=r"t1\.imaging\.report\.v1"):
        await delivery.deliver(events(), source="mllp://10.0.0.7:1", control_id="G-0004")


async def test_no_acknowledgement_in_time_is_a_delivery_error() -> None:
    delivery = KafkaDelivery(FakeProducer("hang"), CODEC, TOPICS, timeout_s=0.05)
    with pytest.raises(DeliveryError, match="did not acknowledge within"):
        await delivery.deliver(events(), source="mllp://10.0.0.7:1")


async def test_a_dead_letter_goes_to_the_dlq_and_to_the_rejected_sink() -> None:
    producer = FakeProducer()
    sink = MemorySink()
    delivery = KafkaDelivery(producer, CODEC, TOPICS, rejected=sink)

    await delivery.dead_letter(letter())

    ((topic, value, key, headers),) = producer.sent
    assert (topic, key, headers) == ("t1.governance.dlq.v1", None, [])
    assert CODEC.decode(value, DeadLetter) == letter()
    assert sink.records(DeadLetter) == [letter()]  # flushed before dead_letter returned
    await delivery.close()
    assert producer.stopped


async def test_a_dead_letter_the_broker_refused_is_not_written_to_the_sink() -> None:
    from aiokafka.errors import NotLeaderForPartitionError

    sink = MemorySink()
    delivery = KafkaDelivery(
        FakeProducer(NotLeaderForPartitionError()), CODEC, TOPICS, rejected=sink
    )
    with pytest.raises(DeliveryError):
        await delivery.dead_letter(letter())
    assert sink.records(DeadLetter) == []


async def test_a_failing_rejected_sink_is_a_delivery_error() -> None:
    class BrokenSink(MemorySink):
        def flush(self) -> None:
            raise SinkError("ClickHouse is down")

    delivery = KafkaDelivery(FakeProducer(), CODEC, TOPICS, rejected=BrokenSink())
    with pytest.raises(DeliveryError, match="ClickHouse is down"):
        await delivery.dead_letter(letter())
