"""Fault test (a) of the cluster: one Kafka broker SIGKILLed while the live pipeline runs.

The worker (tests/integration/test_live_harness.py) reads and writes topics with
replication factor 3 and ``min.insync.replicas`` 2 on the three-broker cluster
(``infra/kafka/cluster.sh``); its changelogs and contributions topic are replicated the
same way (IMGOV_KAFKA_REPLICATION_FACTOR / _MIN_INSYNC_REPLICAS). A stream of a few
thousand events is produced at a steady rate by an idempotent ``acks=all`` producer.
Mid-stream the broker that coordinates the worker's consumer group (the leader of its
``__consumer_offsets`` partition, which also leads about a third of the input
partitions) is SIGKILLed: commits, heartbeats and a share of the fetches and produces
lose their broker at once. The stream must go on (the group commits new input while
the broker is down); the broker is restarted once the cluster has fenced it and is
waited for until it is back in every ISR. The audit tables must then equal ``imgov
replay`` of the same stream on both ClickHouse replicas, and ``imgov audit verify`` pass
on both (tests/cluster/harness.py): nothing lost, nothing doubled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    ClusterEnv,
    assert_cluster_equal_to_replay,
    opened_cluster,
    replicas_summary,
)
from tests.cluster.kafka_cluster import (
    cluster_script,
    describe_partitions,
    group_coordinator,
    input_leaders,
    require_kafka_cluster,
)
from tests.integration.test_live_harness import LiveEnv, encoded, simulate

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RecordProperty = Callable[[str, object], None]

RATE = 100.0
"""Events per second: the stream lasts about 18 s, the broker is down for most of it."""
WARM_UP = 100
"""Events produced before the rest, to see the worker running before the fault."""


class IdempotentProducer(threading.Thread):
    """Produces ``messages`` in order at ``rate`` per second with ``acks=all`` and
    idempotence, as imgov's own producers do; counts what the brokers refused."""

    def __init__(self, bootstrap: str, messages: list[tuple[str, bytes, bytes]], rate: float):
        super().__init__(daemon=True, name="idempotent-producer")
        self._servers, self._messages, self._rate = bootstrap, messages, rate
        self.sent = 0
        self.failed: list[BaseException] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=self._servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                delivery_timeout_ms=120_000,
            )
            start = time.monotonic()
            for i, (topic, key, value) in enumerate(self._messages):
                future = producer.send(topic, key=key, value=value)
                future.add_errback(self.failed.append)
                self.sent = i + 1
                ahead = start + i / self._rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush(timeout=120)
            producer.close()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout_s: float = 180) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error
        assert not self.failed, f"{len(self.failed)} events refused: {self.failed[:3]}"


@pytest.fixture
def kafka_cluster_env(clickhouse_cluster: None, tmp_path: Path) -> Iterator[ClusterEnv]:
    """A live env on both clusters: three brokers (topics RF 3, min ISR 2) and the two
    ClickHouse replicas."""
    bootstrap = require_kafka_cluster()
    env = ClusterEnv(
        bootstrap,
        tmp_path,
        kafka_env={
            "IMGOV_KAFKA_REPLICATION_FACTOR": "3",
            "IMGOV_KAFKA_MIN_INSYNC_REPLICAS": "2",
        },
    )
    with opened_cluster(env):
        yield env


def _victim(env: LiveEnv) -> tuple[int, str]:
    """The group coordinator (why: see the module docstring), and what it leads."""
    coordinator = group_coordinator(env.bootstrap, env.app_id)
    leads = input_leaders(env.bootstrap, list(env.topics.inputs))
    return coordinator, (
        f"group coordinator, leader of {leads[coordinator]} of {sum(leads.values())}"
        " input partitions"
    )


def _fenced(env: LiveEnv, node: int) -> bool:
    """The cluster noticed: ``node`` is out of every input partition's ISR."""
    try:
        parts = describe_partitions(env.bootstrap, list(env.topics.inputs))
    except Exception:
        return False
    return all(node not in p["isr_nodes"] for p in parts.values())


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, env: LiveEnv) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        env.assert_alive()
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s\n{env.logs()}")


def test_broker_sigkilled_mid_stream_loses_nothing(
    kafka_cluster_env: ClusterEnv, tmp_path: Path, record_property: RecordProperty
) -> None:
    env = kafka_cluster_env
    for tp, p in describe_partitions(env.bootstrap, [*env.topics.inputs]).items():
        assert len(p["replica_nodes"]) == 3, tp
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, days=6, sites=2, per_day=60, seed=53), env.topics)
    env.start_worker()
    warm_up = IdempotentProducer(env.bootstrap, messages[:WARM_UP], rate=1000.0)
    warm_up.start()
    warm_up.finish()
    env.wait_for_progress({}, timeout_s=90)  # group joined, state ready, committing
    producer = IdempotentProducer(env.bootstrap, messages[WARM_UP:], RATE)
    producer.start()
    _wait(lambda: producer.sent >= len(messages) // 3, 60, "a third produced", env)

    node, role = _victim(env)
    # The worker's own topics exist by now (changelogs): every one replicated 3 times.
    changelogs = [t for t in _all_topics(env) if t.startswith(env.app_id)]
    assert changelogs, "no changelog topic"
    for tp, p in describe_partitions(env.bootstrap, changelogs).items():
        assert len(p["replica_nodes"]) == 3, tp
    killed_at = time.monotonic()
    cluster_script("kill", str(node))
    try:
        produced_at_kill = producer.sent
        # The group's offsets are readable again once a new coordinator took over.
        before = _committed_eventually(env, timeout_s=60)
        env.wait_for_progress(before, timeout_s=90)  # the stream goes on without it
        progress_s = time.monotonic() - killed_at
        _wait(lambda: _fenced(env, node), 60, f"broker {node} not fenced", env)
    finally:
        # Whatever happened, the next test gets three brokers: back in every ISR.
        cluster_script("restart", str(node), timeout_s=180)
    down_s = time.monotonic() - killed_at
    producer.finish()

    env.wait_until_settled(timeout_s=240)
    env.stop_worker()  # a graceful stop writes the last audit checkpoint
    figures = assert_cluster_equal_to_replay(env, events_file)
    record_property(
        "measured",
        f"broker {node} ({role}) SIGKILLed after {WARM_UP + produced_at_kill} of"
        f" {len(messages)} events"
        f", down {down_s:.1f} s (until back in every ISR), input committed again"
        f" {progress_s:.1f} s after the kill; rows compared with replay:"
        f" {figures['rows_compared_ch1']} on ch1, {figures['rows_compared_ch2']} on ch2;"
        f" {replicas_summary(figures['replicas'])}",
    )


def _committed_eventually(env: LiveEnv, timeout_s: float) -> dict[tuple[str, int], int]:
    deadline = time.monotonic() + timeout_s
    while True:
        env.assert_alive()
        try:
            return env.committed()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _all_topics(env: LiveEnv) -> list[str]:
    from kafka.admin import KafkaAdminClient

    admin: Any = KafkaAdminClient(bootstrap_servers=env.bootstrap)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()
