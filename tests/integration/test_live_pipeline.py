"""The live worker (Kafka -> Faust agents -> Kafka + ClickHouse) against real services.

Equality is on FINAL results (see ``test_live_harness``): ``lineage_latest`` without
revision numbers and hashes, ``kpi_final`` without revision, breaches, dead letters by
reason. Intermediate revisions depend on batching, live or offline. Kills and restarts
are in ``test_live_restarts``, outages and rescaling in ``test_live_resilience``. The
first test also checks the worker's signed audit checkpoints against what it stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from schemas.codec import Codec
from schemas.records import AuditCheckpoint
from schemas.registry import registry_from_environ
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import ClickHouseBackend
from streams.cli.audit import verify_checkpoints
from streams.governance import checkpoint_keyring, load_settings
from tests.integration.test_live_harness import (
    LiveEnv,
    assert_equal_to_replay,
    encoded,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_live_results_equal_offline_replay(live_env: LiveEnv, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file)
    live_env.extra_env["IMGOV_WORKER_AUDIT_CHECKPOINT_INTERVAL_S"] = "2"
    live_env.start_worker()
    produce(live_env.bootstrap, encoded(events, live_env.topics))
    live_env.wait_until_settled()
    assert_equal_to_replay(live_env, events_file)
    live_env.stop_worker()  # a graceful stop writes a last checkpoint
    assert_audit_checkpoints_verify(live_env)


def assert_audit_checkpoints_verify(env: LiveEnv) -> None:
    """Every partition has a verified checkpoint in ClickHouse and on the compacted
    topic, and ``imgov audit verify`` finds nothing against them."""
    backend = ClickHouseBackend.connect(ClickHouseSettings(database=env.database))
    try:
        keyring = checkpoint_keyring(load_settings(demo=True))
        _, keys, problems, report = verify_checkpoints(backend, keyring)
    finally:
        backend.close()
    assert problems == [] and report.findings == []
    assert sorted(c.partition for c in report.checkpoints) == list(range(env.partitions))
    assert len(report.verified) == env.partitions
    assert report.audit.heads == keys > 0  # five days of input: nothing evicted
    assert max(c.sequence for c in report.checkpoints) >= 2  # periodic ones, then the last

    codec = Codec(registry_from_environ(os.environ))
    consumer = KafkaConsumer(
        env.topics.audit_checkpoint,
        bootstrap_servers=env.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3_000,
        **env.client_options(),
    )
    try:
        latest = {int(m.key): codec.decode(m.value, AuditCheckpoint) for m in consumer}
    finally:
        consumer.close()
    assert sorted(latest.values(), key=lambda c: c.partition) == report.checkpoints


def test_lineage_and_kpi_roles_in_separate_workers_equal_offline_replay(
    live_env: LiveEnv, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, seed=23)
    live_env.start_worker("lineage", role="lineage")
    live_env.start_worker("kpi", role="kpi")
    produce(live_env.bootstrap, encoded(events, live_env.topics))
    live_env.wait_until_settled()
    assert_equal_to_replay(live_env, events_file)
