"""The live worker (Kafka -> Faust agents -> Kafka + ClickHouse) against real services.

Equality is on FINAL results (see ``test_live_harness``): ``lineage_latest`` without
revision numbers and hashes, ``kpi_final`` without revision, breaches, dead letters by
reason. Intermediate revisions depend on batching, live or offline. Kills and restarts
are in ``test_live_restarts``, outages and rescaling in ``test_live_resilience``.
"""

from __future__ import annotations

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
