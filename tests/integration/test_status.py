"""``imgov status`` against the real broker and ClickHouse server, and a served registry.

One pipeline is staged for the module: a namespaced input topic with messages, a
consumer group with one static member that committed part of them (so there is lag),
a ``WorkerMetrics`` registry served on a free port with watermark lag, a commit and a
sink holding offsets, and a fresh audit database holding dead letters and breaches
written through ``ClickHouseSink``. The command runs as a subprocess, as a person
or a script would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.records import BreachState
from schemas.units import HOUR_MS, format_duration
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend
from streams.metrics import WorkerMetrics, serve_metrics
from streams.runtime.topic_admin import TopicRole, TopicSpec, create_topics
from streams.topics import WorkerTopics
from tests.integration.conftest import CLICKHOUSE_HOST, CLICKHOUSE_PORT, require_service
from tests.integration.test_live_harness import free_port
from tests.unit.sinks import factory

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

IMGOV = str(Path(sys.executable).parent / "imgov")
PRODUCED = {0: 7, 1: 4}
"""Messages produced per partition."""
COMMITTED = {0: 3}
"""Offsets the group commits (partition 1: nothing)."""
WATERMARK_LAG_S = {"lineage": 42.0, "kpi": 2 * 3600.0}
COMMIT_AGE_S = 5.0
FLUSH_AGE_S = 30.0
OPEN_STUDIES = 17


@dataclass(frozen=True)
class Staged:
    bootstrap: str
    namespace: str
    topic: str
    group: str
    instance_id: str
    metrics_url: str
    database: str
    metrics_set_at_s: float
    dead_letters: dict[str, int]
    """Dead letters per reason received within the last hour."""
    open_breaches: set[str]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [IMGOV, "status", "--group", self.group, "--namespace", self.namespace, *args],
            env={
                **os.environ,
                "IMGOV_KAFKA_BOOTSTRAP": self.bootstrap,
                "IMGOV_CLICKHOUSE_HOST": CLICKHOUSE_HOST,
                "IMGOV_CLICKHOUSE_PORT": str(CLICKHOUSE_PORT),
                "IMGOV_CLICKHOUSE_DATABASE": self.database,
                "COLUMNS": "160",
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _produce_and_join(bootstrap: str, topic: str, group: str, instance_id: str) -> object:
    """Produces ``PRODUCED``, joins ``group`` as a static member and commits ``COMMITTED``;
    returns the member (still in the group) for the caller to close."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for partition, count in PRODUCED.items():
            for i in range(count):
                producer.send(topic, f"m{i}".encode(), partition=partition)
        producer.flush()
    finally:
        producer.close()
    member = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        group_instance_id=instance_id,
        client_id="status-test",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    deadline = time.monotonic() + 30
    while not member.assignment():
        assert time.monotonic() < deadline, "the test member was never assigned partitions"
        member.poll(timeout_ms=200)
    member.commit(
        {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in COMMITTED.items()}
    )
    return member


def _audit_database(name: str) -> tuple[dict[str, int], set[str]]:
    """Migrates database ``name`` and writes the factory's dead letters and breaches
    through the sink; returns the dead letters of the last hour per reason and the
    ids of the breaches left open."""
    settings = ClickHouseSettings(host=CLICKHOUSE_HOST, port=CLICKHOUSE_PORT, database=name)
    backend = ClickHouseBackend.connect(settings, create_database=True)
    try:
        migrate(backend)
        sink = ClickHouseSink(backend)
        letters, breaches = factory.dead_letters(), factory.breaches()
        written_from_ms = time.time_ns() // 1_000_000
        for record in (*letters, *breaches):
            sink.add(record)
        sink.flush()
    finally:
        backend.close()
    recent: dict[str, int] = {}
    for letter in letters:
        # No source time: the sink stamps it when it takes the letter.
        if letter.received_at_ms is None or letter.received_at_ms >= written_from_ms - HOUR_MS:
            recent[letter.reason.value] = recent.get(letter.reason.value, 0) + 1
    resolved = {b.breach_id for b in breaches if b.state is BreachState.RESOLVED}
    opened = {b.breach_id for b in breaches if b.state is BreachState.OPEN}
    return recent, opened - resolved


@pytest.fixture(scope="module")
def staged(kafka_bootstrap: str) -> Iterator[Staged]:
    require_service("ClickHouse", CLICKHOUSE_HOST, CLICKHOUSE_PORT, "make up")
    suffix = uuid.uuid4().hex[:10]
    namespace = f"status{suffix}."
    topic = WorkerTopics.with_namespace(namespace).inference
    group = f"imgov-status-{suffix}"
    database = f"imgov_status_{suffix}"
    spec = TopicSpec(
        name=topic, role=TopicRole.INPUT, partitions=len(PRODUCED), replication_factor=1
    )
    create_topics(kafka_bootstrap, [spec])
    member = None
    server = None
    try:
        member = _produce_and_join(kafka_bootstrap, topic, group, f"{group}-w1")
        metrics = WorkerMetrics()
        now_s = time.time()
        for stage, lag_s in WATERMARK_LAG_S.items():
            metrics.watermark_lag.labels(stage).set(lag_s)
        metrics.observe_partitions(
            [(topic, 0, COMMITTED[0], PRODUCED[0])], {(topic, 0): now_s - COMMIT_AGE_S}
        )
        metrics.backpressure.labels("clickhouse").set(1)
        metrics.last_flush.labels("clickhouse").set(now_s - FLUSH_AGE_S)
        metrics.open_studies.set(OPEN_STUDIES)
        server = serve_metrics(metrics.registry, "127.0.0.1", 0)
        dead_letters, open_breaches = _audit_database(database)
        yield Staged(
            bootstrap=kafka_bootstrap,
            namespace=namespace,
            topic=topic,
            group=group,
            instance_id=f"{group}-w1",
            metrics_url=f"http://127.0.0.1:{server.port}/metrics",
            database=database,
            metrics_set_at_s=now_s,
            dead_letters=dead_letters,
            open_breaches=open_breaches,
        )
    finally:
        if server is not None:
            server.close()
        if member is not None:
            member.close()  # type: ignore[attr-defined]
        _drop(kafka_bootstrap, topic, database)


def _drop(bootstrap: str, topic: str, database: str) -> None:
    from kafka.admin import KafkaAdminClient

    backend = ClickHouseBackend.connect(
        ClickHouseSettings(host=CLICKHOUSE_HOST, port=CLICKHOUSE_PORT, database="system")
    )
    try:
        backend.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        backend.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def test_json_reports_lag_watermarks_dead_letters_and_open_breaches(staged: Staged) -> None:
    done = staged.run("--json", "--metrics", staged.metrics_url)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["ok"] and status["errors"] == []

    (group,) = status["groups"]
    assert group["group_id"] == staged.group and group["state"] == "Stable"
    (member,) = group["members"]
    assert member["instance_id"] == staged.instance_id
    assert member["assigned"] == [[staged.topic, p] for p in sorted(PRODUCED)]
    by_partition = {p["partition"]: p for p in group["partitions"]}
    for partition, produced in PRODUCED.items():
        row = by_partition[partition]
        assert row["committed"] == COMMITTED.get(partition)
        assert row["end"] == produced
        assert row["lag"] == produced - COMMITTED.get(partition, 0)
        assert row["owner"] == staged.instance_id
    expected_lag = sum(PRODUCED.values()) - sum(COMMITTED.values())
    assert group["lag"] == expected_lag
    assert [(t["topic"], t["lag"]) for t in group["topics"]] == [(staged.topic, expected_lag)]

    (worker,) = status["workers"]
    assert worker["process"] == "worker" and worker["error"] is None
    assert worker["watermark_lag_ms"] == {s: v * 1000 for s, v in WATERMARK_LAG_S.items()}
    commit_ms = (staged.metrics_set_at_s - COMMIT_AGE_S) * 1000
    assert abs(worker["last_commit_ms"] - commit_ms) <= 1
    assert worker["backpressure"] == {"clickhouse": True}
    assert worker["open_studies"] == OPEN_STUDIES

    audit = status["audit"]
    assert audit["where"].endswith(f"/{staged.database}")
    assert {d["reason"]: d["count"] for d in audit["dead_letters"]} == staged.dead_letters
    assert {b["breach_id"] for b in audit["open_breaches"]} == staged.open_breaches


def test_screen_names_the_group_its_lag_the_worker_and_the_audit_findings(staged: Staged) -> None:
    done = staged.run("--metrics", staged.metrics_url)
    assert done.returncode == 0, done.stdout + done.stderr
    screen = done.stdout
    print(screen)  # the screen a person sees (pytest -s)
    expected_lag = sum(PRODUCED.values()) - sum(COMMITTED.values())
    assert f"Consumer group {staged.group}: Stable, 1 member(s), lag {expected_lag:,}" in screen
    assert staged.instance_id in screen and staged.topic in screen
    for stage, lag_s in WATERMARK_LAG_S.items():
        assert f"{stage}: {format_duration(lag_s * 1000)}" in screen
    assert "clickhouse: holding offsets" in screen
    for reason in staged.dead_letters:
        assert reason in screen
    breaches = {b.breach_id: b for b in factory.breaches()}
    for breach_id in staged.open_breaches:
        assert breaches[breach_id].rule_id in screen
        assert breaches[breach_id].severity.value in screen
    assert "every source answered" in screen


def test_unreachable_sources_are_shown_and_exit_1(staged: Staged) -> None:
    closed = free_port()
    done = staged.run(
        "--metrics", f"http://127.0.0.1:{closed}/metrics", IMGOV_CLICKHOUSE_PORT=str(closed)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    screen = done.stdout
    assert f"Consumer group {staged.group}: Stable" in screen  # Kafka still answered
    assert f"http://127.0.0.1:{closed}/metrics: not reachable" in screen
    assert f"ClickHouse 127.0.0.1:{closed}/{staged.database}" in screen
    assert "✗ not reachable: clickhouse" in screen
