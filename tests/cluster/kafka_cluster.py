"""The local three-broker Kafka cluster (``infra/kafka/cluster.sh``) for the cluster tests.

Not a conftest (``tests/cluster/conftest.py`` and ``harness.py`` hold the shared
fixtures): what the Kafka tests need besides, i.e. the contract's addresses, the
script's ``kill N`` / ``restart N``, and who leads what.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections import Counter
from typing import Any

import pytest

from streams.paths import REPO_ROOT

NODES = (1, 2, 3)
CLUSTER_BOOTSTRAP = ",".join(f"127.0.0.1:19{n}92" for n in NODES)
CLUSTER_SCRIPT = REPO_ROOT / "infra" / "kafka" / "cluster.sh"
OFFSETS_PARTITIONS = 3
"""``offsets.topic.num.partitions`` of infra/kafka/cluster.properties.template."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_kafka_cluster() -> str:
    """The cluster's bootstrap; skips (locally) or fails (CI) unless all three answer."""
    down = []
    for n in NODES:
        try:
            with socket.create_connection(("127.0.0.1", int(f"19{n}92")), timeout=2):
                pass
        except OSError:
            down.append(n)
    if down:
        message = (
            f"Kafka cluster node(s) {down} not reachable on 127.0.0.1:19N92;"
            " start the cluster with `make cluster-up` (or infra/kafka/cluster.sh start)"
        )
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return CLUSTER_BOOTSTRAP


def cluster_script(*args: str, timeout_s: float = 120) -> str:
    """Runs ``infra/kafka/cluster.sh ARGS``; fails the test with its output if it fails."""
    done = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cluster.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _admin(bootstrap: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)


def describe_partitions(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Leader, replicas and ISR of each partition of ``topics`` (kafka-python's
    ``leader_id``, ``replica_nodes``, ``isr_nodes``)."""
    admin = _admin(bootstrap)
    try:
        return {
            (t["name"], p["partition_index"]): p
            for t in admin.describe_topics(topics)
            for p in t["partitions"]
        }
    finally:
        admin.close()


def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configs each topic has on the brokers (describe_configs)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(bootstrap)
    try:
        answer = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        admin.close()
    return {
        topic: {name: entry["value"] for name, entry in configs.items()}
        for topic, configs in answer["topic"].items()
    }


def _java_hash(text: str) -> int:
    h = 0
    for char in text:  # Java hashes UTF-16 code units: the same for ASCII names
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def group_coordinator(bootstrap: str, group: str) -> int:
    """The broker coordinating ``group``: the leader of its ``__consumer_offsets``
    partition, ``abs(group.hashCode()) % offsets.topic.num.partitions`` (Kafka's rule)."""
    partition = (_java_hash(group) & 0x7FFFFFFF) % OFFSETS_PARTITIONS
    leader: int = describe_partitions(bootstrap, ["__consumer_offsets"])[
        ("__consumer_offsets", partition)
    ]["leader_id"]
    return leader


def input_leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    """How many partitions of ``topics`` each broker leads."""
    return Counter(p["leader_id"] for p in describe_partitions(bootstrap, topics).values())
