"""The live worker through outages and rescaling: final results still equal replay."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_live_harness import (
    LiveEnv,
    assert_equal_to_replay,
    clickhouse_service,
    encoded,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_clickhouse_down_20s_mid_stream(live_env: LiveEnv, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, seed=31), live_env.topics)
    half = len(messages) // 2
    live_env.start_worker()
    produce(live_env.bootstrap, messages[:half])
    time.sleep(4)
    clickhouse_service("stop")
    try:
        produce(live_env.bootstrap, messages[half:])
        time.sleep(20)
        live_env.assert_alive()
    finally:
        clickhouse_service("start")
    live_env.wait_until_settled(timeout_s=240)
    assert_equal_to_replay(live_env, events_file)


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
    assert_equal_to_replay(live_env, events_file)


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
    assert_equal_to_replay(live_env, events_file)
