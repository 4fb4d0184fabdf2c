"""The live worker (Kafka -> Faust agents -> Kafka + ClickHouse) against real services.

Equality is on FINAL results (see ``test_live_harness``): ``lineage_latest`` without
revision numbers and hashes, ``kpi_final`` without revision, breaches, dead letters by
reason. Intermediate revisions depend on batching, live or offline.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

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
    live_env.start_worker()
    produce(live_env.bootstrap, encoded(events, live_env.topics))
    live_env.wait_until_settled()
    assert_equal_to_replay(live_env, events_file)


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


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    live_env: LiveEnv, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, seed=23)
    messages = encoded(events, live_env.topics)
    rng = random.Random(20240607)
    live_env.start_worker()
    # Produce in slices so that kills land while input is flowing.
    slices = 4
    step = len(messages) // slices + 1
    for i in range(slices):
        produce(live_env.bootstrap, messages[i * step : (i + 1) * step])
        time.sleep(rng.uniform(3.0, 9.0))
        live_env.kill_worker()
        live_env.start_worker()
    live_env.wait_until_settled(timeout_s=240)
    assert_equal_to_replay(live_env, events_file)
