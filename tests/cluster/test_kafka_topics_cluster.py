"""`imgov topics create` on the three-broker cluster.

With IMGOV_KAFKA_REPLICATION_FACTOR=3 and IMGOV_KAFKA_MIN_INSYNC_REPLICAS=2 every topic
gets three replicas, all in sync, and ``min.insync.replicas=2``, read back from the
brokers. (Two brokers down is not tested: each node is also a controller, so two down
leave no metadata quorum to shrink the ISR, and an ``acks=all`` write then times out
instead of getting NOT_ENOUGH_REPLICAS.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streams.paths import REPO_ROOT
from streams.runtime.topic_admin import load_topics
from tests.cluster.kafka_cluster import (
    describe_partitions,
    require_kafka_cluster,
    topic_configs,
)

pytestmark = [pytest.mark.kafka]

IMGOV = str(Path(sys.executable).parent / "imgov")


def _delete(bootstrap: str, topics: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(topics)
    except Exception:  # best effort: a leftover test topic harms nobody
        pass
    finally:
        admin.close()


def test_topics_create_replicates_every_topic_three_times_with_min_insync_two(
    tmp_path: Path,
) -> None:
    bootstrap = require_kafka_cluster()
    prefix = f"rf{uuid.uuid4().hex[:8]}."
    # The file must define the pipeline's own names (the loader's rule), so the test's
    # topics are a prefixed copy of every table appended to it (as outputs: the inputs'
    # role is reserved). The pipeline's names are created too, as `imgov topics create`
    # does on a fresh cluster (left in place, like the real file's); the assertions are
    # on the fresh copies only.
    original = (REPO_ROOT / "infra" / "kafka" / "topics.toml").read_text(encoding="utf-8")
    names = [spec.name for spec in load_topics().topics]
    copy = original.replace('role = "input"', 'role = "output"')
    for name in names:
        copy = copy.replace(f'"{name}"', f'"{prefix}{name}"')
    file = tmp_path / "topics.toml"
    file.write_text(original + "\n" + copy, encoding="utf-8")
    env = {
        **os.environ,
        "IMGOV_KAFKA_BOOTSTRAP": bootstrap,
        "IMGOV_KAFKA_REPLICATION_FACTOR": "3",
        "IMGOV_KAFKA_MIN_INSYNC_REPLICAS": "2",
    }
    created = [prefix + name for name in names]
    try:
        done = subprocess.run(
            [IMGOV, "topics", "create", "--file", str(file)],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        partitions = describe_partitions(bootstrap, created)
        assert {tp[0] for tp in partitions} == set(created)
        for tp, p in partitions.items():
            assert len(p["replica_nodes"]) == 3, tp
            assert sorted(p["isr_nodes"]) == [1, 2, 3], tp
        configs = topic_configs(bootstrap, created)
        assert {t: c["min.insync.replicas"] for t, c in configs.items()} == dict.fromkeys(
            created, "2"
        )
    finally:
        _delete(bootstrap, created)
