"""A consumer group resumes exactly after its committed offsets across a broker restart.

The pipeline commits offsets only after its sinks flushed (at-least-once with
idempotent sinks, DESIGN §7); that guarantee is only as good as the broker keeping the
commits. This test stops the real broker with ``infra/kafka/kafka.sh stop`` and starts
it again in the middle: nothing committed may be read again, nothing uncommitted lost.

It restarts the shared broker, so it is marked ``broker_restart`` and runs after every
other test (tests/integration/conftest.py), and it always leaves the broker running.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import RetriableError

pytestmark = [pytest.mark.kafka, pytest.mark.broker_restart]

PARTITIONS = 3
BEFORE_RESTART = 30
# Not a multiple of PARTITIONS: the commit points land mid-partition, and a partition may
# have no commit at all (then the group starts it from the earliest offset).
PROCESSED_BEFORE_RESTART = 13
AFTER_RESTART = 20


def _produce(bootstrap: str, topic: str, values: range) -> dict[str, tuple[int, int]]:
    """Sends m-000, m-001, ... round-robin over the partitions.

    Returns value -> (partition, offset) of every record.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        futures = {
            f"m-{i:03d}": producer.send(
                topic, key=f"k{i}".encode(), value=f"m-{i:03d}".encode(), partition=i % PARTITIONS
            )
            for i in values
        }
        producer.flush(timeout=30)
        return {
            v: (f.get(timeout=30).partition, f.get(timeout=30).offset) for v, f in futures.items()
        }
    finally:
        producer.close()


async def _consume(
    bootstrap: str, topic: str, group: str, count: int, *, linger_s: float = 0.0
) -> tuple[list[tuple[int, int, str]], AIOKafkaConsumer]:
    """Joins ``group`` and reads ``count`` records (then ``linger_s`` more seconds).

    Returns the records as (partition, offset, value) in arrival order, and the still
    running consumer (the caller commits and stops it).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    await consumer.start()
    got: list[tuple[int, int, str]] = []
    deadline = time.monotonic() + 60
    while len(got) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=count - len(got))
        for tp, msgs in batches.items():
            got.extend((tp.partition, m.offset, m.value.decode()) for m in msgs)
    extra_until = time.monotonic() + linger_s
    while time.monotonic() < extra_until:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, msgs in batches.items():
            got.extend((tp.partition, m.offset, m.value.decode()) for m in msgs)
    return got, consumer


def _committed_offsets(bootstrap: str, group: str, timeout_s: float = 30.0) -> dict[int, int]:
    """The group's committed offsets by partition, once its coordinator has loaded.

    "Ready" (kafka.sh) means the broker answers metadata; the group coordinator loads
    __consumer_offsets a moment later and answers NOT_COORDINATOR until then. aiokafka
    and Faust retry that by themselves, kafka-python's admin client does not.
    """
    deadline = time.monotonic() + timeout_s
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        while True:
            try:
                offsets = admin.list_group_offsets(group)[group]
                return {tp.partition: om.offset for tp, om in offsets.items()}
            except RetriableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        admin.close()


def _port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


async def test_group_resumes_after_committed_offsets_across_a_broker_restart(
    managed_kafka: str,
    kafka_script: Callable[..., object],
    kafka_topic_factory: Callable[..., str],
) -> None:
    bootstrap = managed_kafka
    topic = kafka_topic_factory("it.restart", partitions=PARTITIONS)
    group = f"{topic}.group"
    placed = _produce(bootstrap, topic, range(BEFORE_RESTART))

    # 1. Process part of the backlog and commit exactly what was processed.
    processed, consumer = await _consume(bootstrap, topic, group, PROCESSED_BEFORE_RESTART)
    assert len(processed) == PROCESSED_BEFORE_RESTART
    next_offsets: dict[int, int] = {}
    for partition, offset, _ in processed:
        next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
    commit = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in next_offsets.items()}
    await consumer.commit(commit)
    await consumer.stop()

    try:
        # 2. Restart the broker; its data directory (and __consumer_offsets) is kept.
        kafka_script("stop")
        assert not _port_open(bootstrap), "the broker still answers after kafka.sh stop"
        kafka_script("start")

        # 3. The commits survived the restart.
        committed = _committed_offsets(bootstrap, group)
        assert committed == next_offsets

        # 4. More input arrives after the restart.
        placed |= _produce(bootstrap, topic, range(BEFORE_RESTART, BEFORE_RESTART + AFTER_RESTART))

        # 5. A new member of the same group reads everything after the commits, once.
        processed_values = {v for _, _, v in processed}
        expected = {v: pos for v, pos in placed.items() if v not in processed_values}
        resumed, consumer = await _consume(bootstrap, topic, group, len(expected), linger_s=2.0)
        await consumer.stop()
    finally:
        kafka_script("start")  # idempotent: the broker must be up for whoever is next

    resumed_values = [v for _, _, v in resumed]
    assert len(resumed_values) == len(set(resumed_values)), "a record was delivered twice"
    assert not processed_values & set(resumed_values), "a committed record was read again"
    assert set(resumed_values) == set(expected), "records were lost"
    # Within each partition, in offset order, starting right at the committed offset.
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset, value in resumed:
        assert placed[value] == (partition, offset)
        by_partition[partition].append(offset)
    for partition, offsets in by_partition.items():
        assert offsets == sorted(offsets)
        assert offsets[0] == next_offsets.get(partition, 0)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


def test_broker_is_running_at_the_end(managed_kafka: str) -> None:
    """Guards the promise above: whatever happened, the next user finds a broker."""
    assert _port_open(managed_kafka)
