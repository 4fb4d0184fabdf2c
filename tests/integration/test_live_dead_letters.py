"""Bad input on the live input topics, and an alerting system reading the outputs."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from schemas.codec import Codec
from schemas.corpus import bad_input_corpus
from schemas.records import DeadLetter, KpiValue
from schemas.registry import registry_from_environ
from schemas.validation import EventValidator
from tests.integration.test_live_harness import (
    LiveEnv,
    ch_client,
    encoded,
    opened,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


@pytest.fixture
def live_env(kafka_bootstrap: str, clickhouse_writer: object, tmp_path: Path) -> Iterator[LiveEnv]:
    with opened(LiveEnv(kafka_bootstrap, tmp_path)) as env:
        yield env


def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[bytes]:
    """A plain kafka-python consumer, as an alerting system would run one."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2_000,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(values) < expected:
            values.extend(m.value for m in consumer)
    finally:
        consumer.close()
    return values


def test_bad_input_goes_to_dlq_and_rejected_events_and_outputs_decode(
    live_env: LiveEnv, tmp_path: Path
) -> None:
    now_ms = time.time_ns() // 1_000_000
    codec = Codec(registry_from_environ({}), validator=EventValidator(lambda: now_ms))
    # An OVERSIZED input cannot reach the input topics: their max.message.bytes (1 MiB,
    # topics.toml) equals the codec's limit, so the broker refuses it first.
    corpus = [
        item for item in bad_input_corpus(codec, now_ms=now_ms) if len(item.value) < 1_000_000
    ]
    events = simulate(tmp_path / "events.jsonl", days=2, per_day=20)
    good = encoded(events, live_env.topics)
    topics = live_env.topics.inputs
    bad = [(topics[i % 3], f"bad-{i}".encode(), item.value) for i, item in enumerate(corpus)]
    # Interleave: bad messages between good ones, on all three input topics.
    messages, headers = [], {}
    step = max(1, len(good) // (len(bad) + 1))
    for i, message in enumerate(good):
        messages.append(message)
        if i % step == 0 and bad:
            item_index = len(corpus) - len(bad)
            headers[len(messages)] = list(corpus[item_index].headers) or None
            messages.append(bad.pop(0))
    for i, message in enumerate(bad, start=len(corpus) - len(bad)):
        headers[len(messages)] = list(corpus[i].headers) or None
        messages.append(message)
    live_env.start_worker()
    produce(live_env.bootstrap, messages, headers)
    live_env.wait_until_settled()

    # 1. Every bad message is in the DLQ topic, decodable with the DeadLetter schema.
    reader = Codec(registry_from_environ({}))
    letters = [
        reader.decode(v, DeadLetter)
        for v in _read_all(live_env.bootstrap, live_env.topics.dlq, len(corpus))
    ]
    expected = Counter((item.value, item.expected.value) for item in corpus)
    assert Counter((d.value, d.reason.value) for d in letters) == expected
    assert all(d.source_topic in topics and d.source_offset is not None for d in letters)

    # 2. ... and in rejected_events, with reason and original bytes.
    client = ch_client(live_env.database)
    try:
        rows = client.execute("SELECT value, reason FROM rejected_events FINAL")
    finally:
        client.disconnect()
    assert Counter((v.encode() if isinstance(v, str) else v, r) for v, r in rows) == expected

    # 3. The worker kept running and processed the good input.
    live_env.assert_alive()
    client = ch_client(live_env.database)
    try:
        assert client.execute("SELECT count() FROM lineage_latest")[0][0] > 0
    finally:
        client.disconnect()

    # 4. An alerting system decodes KPI values with the published schemas.
    kpis = [
        reader.decode(v, KpiValue) for v in _read_all(live_env.bootstrap, live_env.topics.kpi, 1)
    ]
    assert kpis and any(k.final for k in kpis)
