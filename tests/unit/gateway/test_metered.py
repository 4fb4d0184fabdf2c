"""The gateway's metrics: one outcome per message, dead letters by reason, durations."""

from __future__ import annotations

from schemas.validation import EventValidator
from streams.gateway.delivery import DeliveryError, MemoryDelivery
from streams.gateway.metered import MeteredDelivery
from streams.gateway.mllp import MllpListener
from streams.metrics import GatewayMetrics
from streams.topics import WorkerTopics
from tests.unit.gateway.test_mllp import BAD, GOOD, MAPPING, NOW_MS, wire

TOPICS = WorkerTopics.with_namespace("t.")


def _listener(inner: MemoryDelivery, metrics: GatewayMetrics) -> MllpListener:
    return MllpListener(
        MeteredDelivery(inner, metrics, "hl7", TOPICS),
        MAPPING,
        validator=EventValidator(lambda: NOW_MS),
        clock=lambda: NOW_MS,
        metrics=metrics,
    )


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_each_message_counts_once_as_accepted_rejected_or_retry() -> None:
    metrics, inner = GatewayMetrics(), MemoryDelivery()
    listener = _listener(inner, metrics)
    for path in GOOD:
        await listener.answer(wire(path), "mllp://test")
    bad = [path for path in BAD if path.name == "binary_noise.bin"]
    await listener.answer(wire(bad[0]), "mllp://test")
    inner.failure = DeliveryError("broker unreachable")
    await listener.answer(wire(GOOD[0]), "mllp://test")

    messages = "imgov_gateway_messages_total"
    assert _value(metrics, messages, protocol="hl7", outcome="accepted") == len(GOOD)
    assert _value(metrics, messages, protocol="hl7", outcome="rejected") == 1
    assert _value(metrics, messages, protocol="hl7", outcome="retry") == 1
    assert _value(metrics, "imgov_dead_letters_total", stage="gateway", reason="UNDECODABLE") == 1
    assert _value(metrics, "imgov_output_messages_total", topic=TOPICS.dlq) == 1
    reports = [d for d in inner.delivered if d.event.event_type.value == "report"]
    assert _value(metrics, "imgov_output_messages_total", topic=TOPICS.report) == len(reports)
    count = "imgov_gateway_request_duration_seconds_count"
    assert _value(metrics, count, protocol="hl7") == len(GOOD) + 2


async def test_no_label_carries_what_the_messages_identify() -> None:
    metrics, inner = GatewayMetrics(), MemoryDelivery()
    listener = _listener(inner, metrics)
    for path in GOOD + BAD:
        await listener.answer(wire(path), "mllp://test")
    labels = {
        value
        for family in metrics.registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    }
    identifiers = {
        value
        for d in inner.delivered
        for value in d.event.model_dump().values()
        if isinstance(value, str) and len(value) > 3
    }
    assert identifiers and "hl7" in labels
    assert not labels & identifiers
