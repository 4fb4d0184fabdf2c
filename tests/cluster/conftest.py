"""Fixtures for the cluster tests (``make cluster-up``; run by ``make test-cluster``).

In CI (``CI=true``) a cluster service that does not answer is a failure, never a skip;
elsewhere the tests that need it skip with a message naming ``make cluster-up``.
Figures the tests measure (fault duration, rows compared, ``system.replicas``) are
printed at the end of the run (``record_property("measured", ...)``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import (
    HOST,
    KAFKA_BOOTSTRAP,
    NODES,
    ZOOKEEPER_PORT,
    ClusterEnv,
    cluster_sh,
    opened_cluster,
)
from tests.integration.test_live_harness import write_measured


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_cluster_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) when a cluster service does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}; start the cluster with `make cluster-up`"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def clickhouse_cluster() -> Iterator[None]:
    """ZooKeeper, ch1 and ch2 answering; whatever a test stopped is started again after."""
    require_cluster_service("ZooKeeper", HOST, ZOOKEEPER_PORT)
    for node, port in NODES.items():
        require_cluster_service(f"ClickHouse ch{node}", HOST, port)
    yield
    # A fault test that failed half-way may leave a node or ZooKeeper down.
    cluster_sh("start")


@pytest.fixture
def cluster_kafka_bootstrap() -> str:
    """``IMGOV_KAFKA_BOOTSTRAP`` (the three-broker cluster in CI); its first broker answers."""
    host, _, port = KAFKA_BOOTSTRAP.split(",")[0].rpartition(":")
    require_cluster_service("Kafka", host, int(port))
    return KAFKA_BOOTSTRAP


@pytest.fixture
def cluster_env(
    clickhouse_cluster: None, cluster_kafka_bootstrap: str, tmp_path: Path
) -> Iterator[ClusterEnv]:
    """A live env on the cluster: replicated databases, namespaced topics, cleaned up."""
    env = ClusterEnv(bootstrap=cluster_kafka_bootstrap, tmp=tmp_path)
    with opened_cluster(env):
        yield env


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_measured(terminalreporter, "measured by the cluster tests")
