"""Restarts of the live worker on the real broker and ClickHouse (DESIGN §7).

A worker killed with SIGKILL while input flows and restarted with the same state and
app id resumes its own partitions within seconds (static group membership) and ends
equal to the replay; a worker sent SIGTERM under load drains, commits and exits
within its bound, and its restart re-processes nothing it had committed.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.runtime.outputs import MESSAGE_ID_HEADER
from tests.integration.test_live_harness import (
    IMGOV,
    LiveEnv,
    RateProducer,
    assert_equal_to_replay,
    ch_client,
    clickhouse_service,
    encoded,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RecordProperty = Callable[[str, object], None]

RESUME_TARGET_S = 10.0
WARM_UP = 100
"""Messages produced before the rest, to see the worker running before it is stopped."""
SHUTDOWN_BOUND_S = 30.0


def test_kill_9_three_times_while_producing_resumes_fast_and_equals_replay(
    live_env: LiveEnv, tmp_path: Path, record_property: RecordProperty
) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, days=12, seed=43), live_env.topics)
    live_env.start_worker()
    produce(live_env.bootstrap, messages[:WARM_UP])
    live_env.wait_for_progress({}, timeout_s=90)  # running: group joined, state ready
    producer = RateProducer(live_env.bootstrap, messages[WARM_UP:], rate=len(messages) / 70)
    producer.start()
    resumed = live_env.kill_and_restart(random.Random(20261207), kills=3)
    producer.finish()
    record_property("measured", f"resumed in {', '.join(f'{s:.1f}' for s in resumed)} s")
    live_env.wait_until_settled(timeout_s=240)
    assert_equal_to_replay(live_env, events_file)
    assert max(resumed) < RESUME_TARGET_S, f"resumed in {resumed} s\n{live_env.logs()}"
    for stream, topic in (("kpis", live_env.topics.kpi), ("breaches", live_env.topics.breach)):
        record_property("measured", _assert_repeats_share_an_identity(live_env, stream, topic))


def _read_all(env: LiveEnv, topic: str) -> list[tuple[bytes | None, bytes]]:
    """(imgov.message-id, value) of every message of ``topic``, read with confluent-kafka."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": env.bootstrap,
            "group.id": f"check-{env.suffix}-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes]] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 5:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            quiet_since = time.monotonic()
            headers = dict(message.headers() or ())
            out.append((headers.get(MESSAGE_ID_HEADER), message.value()))
    finally:
        consumer.close()
    return out


def _assert_repeats_share_an_identity(env: LiveEnv, stream: str, topic: str) -> str:
    """Every message has an identity, a repeated identity has the same bytes, and the
    reference subscriber prints each identity once; returns the counts."""
    messages = _read_all(env, topic)
    assert messages and all(message_id for message_id, _ in messages), topic
    values: dict[bytes | None, set[bytes]] = {}
    for message_id, value in messages:
        values.setdefault(message_id, set()).add(value)
    assert [i for i, v in values.items() if len(v) > 1] == [], topic
    printed = subprocess.run(
        [IMGOV, "subscribe", stream, "--namespace", env.namespace, "--from-beginning",
         "--idle-timeout-s", "5"],
        env={**os.environ, "IMGOV_KAFKA_BOOTSTRAP": env.bootstrap},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert sorted(line["message_id"] for line in lines) == sorted(i.decode() for i in values)
    repeats = len(messages) - len(values)
    assert f"{len(values)} printed, {repeats} repeats dropped" in printed.stderr
    return f"{stream}: {len(messages)} messages, {repeats} repeats (same identity, same bytes)"


def _processed_offsets(env: LiveEnv) -> dict[tuple[str, int], int]:
    """One past the highest input offset whose event reached ``event_log``."""
    client = ch_client(env.database)
    try:
        rows = client.execute(
            "SELECT source_topic, source_partition, max(source_offset) + 1 FROM event_log"
            " GROUP BY source_topic, source_partition"
        )
    finally:
        client.disconnect()
    return {(topic, partition): end for topic, partition, end in rows}


def test_sigterm_under_load_drains_within_the_bound_and_restart_reprocesses_nothing(
    live_env: LiveEnv, tmp_path: Path, record_property: RecordProperty
) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, days=12, seed=47), live_env.topics)
    proc = live_env.start_worker()
    produce(live_env.bootstrap, messages[:WARM_UP])
    live_env.wait_for_progress({}, timeout_s=90)
    producer = RateProducer(live_env.bootstrap, messages[WARM_UP:], rate=len(messages) / 40)
    producer.start()
    time.sleep(10)
    assert producer.is_alive(), "input must still be flowing at SIGTERM"
    started = time.monotonic()
    proc.terminate()
    code = proc.wait(timeout=SHUTDOWN_BOUND_S + 30)
    stopped_in = time.monotonic() - started
    live_env.workers.pop("w1")
    record_property("measured", f"exited {code} in {stopped_in:.1f} s")
    assert code == 0, live_env.logs()
    assert stopped_in < SHUTDOWN_BOUND_S, live_env.logs()
    log = (tmp_path / "worker-w1.log").read_text(errors="replace")
    assert "stopping gracefully" in log and "offsets committed" in log, log[-4000:]
    assert "left group" in log and "stopped gracefully in" in log, log[-4000:]

    # Everything the worker processed is committed, and nothing beyond it: the
    # restart reads exactly from where the stopped worker left off.
    committed = live_env.committed()
    processed = _processed_offsets(live_env)
    assert processed, "the worker processed nothing before SIGTERM"
    for source, end in processed.items():
        assert committed.get(source) == end, (source, committed.get(source), end)

    producer.finish()
    live_env.start_worker()
    live_env.wait_until_settled(timeout_s=240)
    live_env.stop_worker()
    log = (tmp_path / "worker-w1.log").read_text(errors="replace")
    second_run = log[log.rindex("stopping gracefully") :]
    skipped = re.search(r"(\d+) of them skipped as already applied", second_run)
    kpi_skipped = re.search(r"(\d+) contributions skipped as already applied", second_run)
    assert skipped and kpi_skipped, second_run
    assert (int(skipped.group(1)), int(kpi_skipped.group(1))) == (0, 0), second_run
    assert_equal_to_replay(live_env, events_file)


def test_sigterm_while_clickhouse_is_down_exits_at_the_bound_and_loses_nothing(
    live_env: LiveEnv, tmp_path: Path, record_property: RecordProperty
) -> None:
    bound_s = 8.0
    live_env.extra_env["IMGOV_WORKER_SHUTDOWN_TIMEOUT_S"] = str(bound_s)
    events_file = tmp_path / "events.jsonl"
    messages = encoded(simulate(events_file, seed=53), live_env.topics)
    half = len(messages) // 2
    proc = live_env.start_worker()
    produce(live_env.bootstrap, messages[:half])
    live_env.wait_for_progress({}, timeout_s=90)
    clickhouse_service("stop")
    try:
        produce(live_env.bootstrap, messages[half:])
        time.sleep(3)  # a batch now waits for ClickHouse, offsets held
        started = time.monotonic()
        proc.terminate()
        code = proc.wait(timeout=bound_s + 30)
        stopped_in = time.monotonic() - started
        live_env.workers.pop("w1")
    finally:
        clickhouse_service("start")
    record_property("measured", f"exited {code} in {stopped_in:.1f} s (bound {bound_s:g} s)")
    log = (tmp_path / "worker-w1.log").read_text(errors="replace")
    assert code == 1, log[-4000:]
    assert bound_s <= stopped_in < bound_s + 5, log[-4000:]
    assert "graceful stop did not finish within 8 s" in log, log[-4000:]
    live_env.start_worker()  # what was not committed is read again
    live_env.wait_until_settled(timeout_s=240)
    assert_equal_to_replay(live_env, events_file)
