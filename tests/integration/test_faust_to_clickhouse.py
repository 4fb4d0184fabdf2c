"""A Faust agent consumes a real topic and writes rows to the real ClickHouse server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from clickhouse_driver import Client
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

REPO = Path(__file__).resolve().parents[2]


def _wait_for_rows(client: Client, table: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = client.execute(f"SELECT count() FROM {table}")[0][0]
        if count >= expected:
            return int(count)
        time.sleep(0.25)
    return int(count)


def test_faust_agent_writes_every_message_to_clickhouse(
    kafka_bootstrap: str, clickhouse_writer: Client, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, table = f"probe.faust.{suffix}", f"probe_faust_{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    clickhouse_writer.execute(
        f"CREATE TABLE {table} (event_id String, study_uid String, score Float64) "
        "ENGINE = MergeTree ORDER BY event_id"
    )
    sent = [
        {"event_id": f"e-{i:04d}", "study_uid": f"1.2.3.{i % 7}", "score": round(i / 250, 4)}
        for i in range(250)
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for doc in sent:
        producer.send(topic, key=doc["study_uid"].encode(), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()

    env = {
        **os.environ,
        "PROBE_BOOTSTRAP": kafka_bootstrap,
        "PROBE_TOPIC": topic,
        "PROBE_TABLE": table,
        "PROBE_APP_ID": f"probe-{suffix}",
        "PROBE_DATADIR": str(tmp_path / "faust"),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "tests.integration.faust_probe_app",
            "worker",
            "-l",
            "warn",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        count = _wait_for_rows(clickhouse_writer, table, len(sent), timeout_s=90)
        assert count == len(sent), (tmp_path / "worker.log").read_text()[-3000:]
        rows = clickhouse_writer.execute(
            f"SELECT event_id, study_uid, score FROM {table} ORDER BY event_id"
        )
        assert rows == [(d["event_id"], d["study_uid"], d["score"]) for d in sent]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        clickhouse_writer.execute(f"DROP TABLE IF EXISTS {table}")
