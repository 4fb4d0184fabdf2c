"""The Kafka side of the gateway benchmarks: the broker, throwaway topics, counts.

``bench_gateway``, ``bench_gateway_fhir`` and ``bench_gateway_dicom`` measure their
listener into ``KafkaDelivery`` on the broker of ``IMGOV_KAFKA_BOOTSTRAP`` (default
127.0.0.1:19092), on input and dead-letter topics behind a fresh namespace that are
deleted afterwards. When the broker is unreachable, the Kafka measure is skipped with a
note, unless ``CI=true``: then it is a failure (STYLE rule 12).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from streams.topics import WorkerTopics

__all__ = ["kafka_bootstrap", "kafka_unreachable", "records_in", "throwaway_topics"]


def kafka_bootstrap() -> str:
    """The broker the benchmarks produce to."""
    return os.environ.get("IMGOV_KAFKA_BOOTSTRAP", "127.0.0.1:19092")


def kafka_unreachable(bootstrap: str, skipped: str) -> str | None:
    """None when ``bootstrap`` accepts a connection; else the note that ``skipped`` is.

    Raises:
        SystemExit: it is unreachable and ``CI`` is set.
    """
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return None
    except OSError:
        pass
    note = f"Kafka is not reachable at {bootstrap}: {skipped} skipped (make up)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        raise SystemExit(note)
    print(note)
    return note


@contextmanager
def throwaway_topics(bootstrap: str, prefix: str, partitions: int = 6) -> Iterator[WorkerTopics]:
    """Creates the three input topics and the dead-letter topic behind a fresh namespace
    ``<prefix><8 hex>.``; yields their names; deletes them on the way out."""
    from kafka.admin import KafkaAdminClient

    from streams.runtime.topic_admin import TopicRole, TopicSpec, create_topics

    topics = WorkerTopics.with_namespace(f"{prefix}{uuid.uuid4().hex[:8]}.")
    specs = [
        TopicSpec(name=name, role=TopicRole.INPUT, partitions=partitions, replication_factor=1)
        for name in topics.inputs
    ]
    specs.append(TopicSpec(name=topics.dlq, role=TopicRole.DLQ, partitions=1, replication_factor=1))
    try:
        create_topics(bootstrap, specs)
        yield topics
    finally:
        # Also after a partial creation: deleting a topic that is not there is harmless.
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            existing = set(admin.list_topics())
            admin.delete_topics([s.name for s in specs if s.name in existing])
        finally:
            admin.close()


def records_in(bootstrap: str, topics: Iterable[str]) -> int:
    """How many records ``topics`` hold: the sum of their partitions' end offsets (the
    gateway's producer is idempotent, not transactional, so there are no markers)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()
