"""The live worker through outages and rescaling: final results still equal replay."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.runtime.settings import REPO_ROOT
from tests.integration.test_live_harness import (
    LiveEnv,
    create_database,
    diff_summary,
    drop_database,
    encoded,
    final_tables,
    produce,
    replay_into,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

CLICKHOUSE_SCRIPT = REPO_ROOT / "infra" / "clickhouse" / "clickhouse.sh"


@pytest.fixture
def live_env(kafka_bootstrap: str, clickhouse_writer: object, tmp_path: Path) -> Iterator[LiveEnv]:
    env = LiveEnv(kafka_bootstrap, tmp_path)
    create_database(env.database)
    create_database(env.offline_database)
    env.create_topics()
    try:
        yield env
    finally:
        env.stop_all()
        drop_database(env.database)
        drop_database(env.offline_database)


def _assert_equal_to_replay(env: LiveEnv, events_file: Path) -> None:
    replay_into(env.offline_database, events_file)
    live, offline = final_tables(env.database), final_tables(env.offline_database)
    assert live["duplicate_rows_in_lineage_latest"] == 0
    assert live == offline, diff_summary(live, offline)


def _clickhouse(command: str) -> None:
    subprocess.run(
        ["bash", str(CLICKHOUSE_SCRIPT), command], check=True, capture_output=True, timeout=120
    )


def test_clickhouse_down_20s_mid_stream(live_env: LiveEnv, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, seed=31), live_env.topics)
    half = len(messages) // 2
    live_env.start_worker()
    produce(live_env.bootstrap, messages[:half])
    time.sleep(4)
    _clickhouse("stop")
    try:
        produce(live_env.bootstrap, messages[half:])
        time.sleep(20)
        live_env.assert_alive()
    finally:
        _clickhouse("start")
    live_env.wait_until_settled(timeout_s=240)
    _assert_equal_to_replay(live_env, events_file)


def test_scale_one_two_one_workers(live_env: LiveEnv, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, seed=37), live_env.topics)
    third = len(messages) // 3
    live_env.start_worker("w1")
    produce(live_env.bootstrap, messages[:third])
    time.sleep(5)
    live_env.start_worker("w2")
    time.sleep(8)
    produce(live_env.bootstrap, messages[third : 2 * third])
    time.sleep(8)
    live_env.stop_worker("w2")
    produce(live_env.bootstrap, messages[2 * third :])
    live_env.wait_until_settled(timeout_s=240)
    _assert_equal_to_replay(live_env, events_file)


@pytest.mark.broker_restart
def test_broker_restart_mid_stream(
    live_env: LiveEnv,
    managed_kafka: str,
    kafka_script: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, seed=41), live_env.topics)
    half = len(messages) // 2
    live_env.start_worker()
    produce(live_env.bootstrap, messages[:half])
    time.sleep(4)
    kafka_script("restart")
    produce(live_env.bootstrap, messages[half:])
    live_env.wait_until_settled(timeout_s=300)
    _assert_equal_to_replay(live_env, events_file)
