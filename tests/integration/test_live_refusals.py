"""A live worker whose ClickHouse refuses some rows: they become dead letters, the rest is
written, and the partitions move on (no batch retried forever).

No production backdoor makes a row refused: the test alters its own database so that the
server refuses the ``lineage_history`` rows of some studies (a DEFAULT expression that
throws for them, evaluated by the server per row on insert).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from schemas.codec import Codec
from schemas.records import DeadLetter, DeadLetterReason
from schemas.registry import registry_from_environ
from tests.integration.test_live_harness import (
    LiveEnv,
    ch_client,
    encoded,
    opened,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

REFUSED = "cityHash64(study_uid) % 4 = 0"
"""The studies whose lineage rows the test's server refuses (about a quarter)."""


@pytest.fixture
def live_env(kafka_bootstrap: str, clickhouse_writer: object, tmp_path: Path) -> Iterator[LiveEnv]:
    with opened(LiveEnv(kafka_bootstrap, tmp_path)) as env:
        yield env


def _query(database: str, sql: str) -> list[tuple[object, ...]]:
    client = ch_client(database)
    try:
        return list(client.execute(sql))
    finally:
        client.disconnect()


def _dead_letters(env: LiveEnv, expected: int, timeout_s: float = 30) -> list[DeadLetter]:
    reader = Codec(registry_from_environ({}))
    consumer = KafkaConsumer(
        env.topics.dlq,
        bootstrap_servers=env.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1_000,
    )
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(letters) < expected:
            letters.extend(reader.decode(m.value, DeadLetter) for m in consumer)
    finally:
        consumer.close()
    return letters


def test_refused_rows_become_dead_letters_and_the_partitions_move_on(
    live_env: LiveEnv, tmp_path: Path
) -> None:
    database = live_env.database
    _query(
        database,
        f"ALTER TABLE lineage_history ADD COLUMN refuse UInt8 DEFAULT toUInt8(throwIf({REFUSED}))",
    )
    events = simulate(tmp_path / "events.jsonl", days=1, sites=1, per_day=30, seed=5)
    live_env.start_worker()
    produce(live_env.bootstrap, encoded(events, live_env.topics))

    # Every input committed (nothing held for a refused batch) and the letters stored.
    deadline = time.monotonic() + 90
    while True:
        live_env.assert_alive()
        refused = _query(
            database,
            "SELECT count() FROM rejected_events FINAL WHERE reason = 'SINK_REJECTED'",
        )[0][0]
        if refused and live_env.group_lag() == 0:
            break
        assert time.monotonic() < deadline, f"no progress\n{live_env.logs()}"
        time.sleep(0.5)

    # The good rows are written, the refused ones are not, and none is in both places.
    stored = _query(database, f"SELECT countIf({REFUSED}), count() FROM lineage_history")
    assert stored[0][0] == 0 and stored[0][1] > 0
    rejected = _query(
        database,
        "SELECT study_uid, message, value_sha256 FROM rejected_events FINAL "
        f"WHERE reason = 'SINK_REJECTED' AND NOT ({REFUSED})",
    )
    assert rejected == []
    messages = _query(
        database,
        "SELECT message FROM rejected_events FINAL WHERE reason = 'SINK_REJECTED'",
    )
    assert all(m.startswith("lineage_history refused the row") for (m,) in messages)  # type: ignore[union-attr]
    assert all("Code: 395" in m for (m,) in messages)  # type: ignore[operator]

    # The same letters are on the dead-letter topic.
    letters = _dead_letters(live_env, len(messages))
    assert {d.reason for d in letters} == {DeadLetterReason.SINK_REJECTED}
    assert len({(d.key, d.value) for d in letters}) == len(messages)

    # Counted: a log line per poison batch and the metrics.
    assert "lineage_history refused" in live_env.logs()
    with urllib.request.urlopen(live_env.metrics_url(), timeout=5) as response:
        metrics = response.read().decode()
    rejected_total = [
        line
        for line in metrics.splitlines()
        if line.startswith('imgov_sink_rows_rejected_total{table="lineage_history"}')
    ]
    assert rejected_total and float(rejected_total[0].split()[-1]) >= len(messages)
    assert 'imgov_sink_poison_batches_total{table="lineage_history"}' in metrics
