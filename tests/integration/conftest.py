"""Fixtures for tests against the real Kafka broker and ClickHouse server.

The services are started by ``make up`` (``infra/kafka/kafka.sh`` and
``infra/clickhouse/clickhouse.sh``). Outside CI a missing service skips its tests, so a
developer can run the unit suite alone; in CI (``CI=true``) a missing service is a
failure, never a skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from clickhouse_driver import Client

from streams.paths import REPO_ROOT
from streams.runtime.topic_admin import TopicRole, TopicSpec, create_topics
from tests.integration.secure_kafka import SecureListener, find_secure_listener
from tests.integration.test_live_harness import LiveEnv, opened, write_measured

KAFKA_BOOTSTRAP = os.environ.get("IMGOV_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
CLICKHOUSE_HOST = os.environ.get("IMGOV_CLICKHOUSE_HOST", "127.0.0.1")
CLICKHOUSE_PORT = int(os.environ.get("IMGOV_CLICKHOUSE_PORT", "19000"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int, how: str) -> None:
    """Skip (locally) or fail (in CI) when a service does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}; start it with `{how}`"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The bootstrap address of the real broker started by infra/kafka/kafka.sh."""
    host, _, port = KAFKA_BOOTSTRAP.rpartition(":")
    require_service("Kafka", host, int(port), "make up")
    return KAFKA_BOOTSTRAP


def _clickhouse_client(user: str, password: str, database: str = "imgov") -> Client:
    require_service("ClickHouse", CLICKHOUSE_HOST, CLICKHOUSE_PORT, "make up")
    return Client(
        host=CLICKHOUSE_HOST,
        port=CLICKHOUSE_PORT,
        user=user,
        password=password,
        database=database,
        connect_timeout=5,
        send_receive_timeout=60,
    )


@pytest.fixture
def clickhouse_writer() -> Iterator[Client]:
    """A client logged in as the pipeline's writer user."""
    client = _clickhouse_client("imgov", "imgov")
    yield client
    client.disconnect()


@pytest.fixture
def clickhouse_compliance() -> Iterator[Client]:
    """A client logged in as the read-only compliance user."""
    client = _clickhouse_client("compliance", "compliance")
    yield client
    client.disconnect()


# --- Kafka: fresh topics, and the broker script for tests that restart it ----------------

KAFKA_SCRIPT = REPO_ROOT / "infra" / "kafka" / "kafka.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_restart: stops and restarts the Kafka broker; runs after all others"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_measured(terminalreporter, "measured by the live tests")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A broker restart disturbs every client connected at that moment: run those tests
    # last (a stable sort keeps the order of everything else).
    items.sort(key=lambda item: item.get_closest_marker("broker_restart") is not None)


@pytest.fixture(scope="session")
def kafka_sasl_ssl(kafka_bootstrap: str) -> SecureListener:
    """The broker's SASL_SSL listener (tests/integration/secure_kafka.py): skipped
    locally, a failure in CI, when kafka.sh did not start the broker with it."""
    found = find_secure_listener()
    if isinstance(found, str):
        if _in_ci():
            pytest.fail(found)
        pytest.skip(found)
    require_service("Kafka SASL_SSL listener", "127.0.0.1", found.port, "make up")
    return found


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Creates uniquely named topics through streams.runtime.topic_admin; deletes them after."""
    created: list[str] = []

    def make(
        prefix: str = "it", partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        spec = TopicSpec(
            name=name,
            role=TopicRole.OUTPUT,
            partitions=partitions,
            replication_factor=1,
            config=dict(config or {}),
        )
        create_topics(kafka_bootstrap, [spec])
        created.append(name)
        return name

    yield make

    if created:
        from kafka.admin import KafkaAdminClient

        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            try:
                admin.delete_topics(created)
            finally:
                admin.close()
        except Exception:  # best effort: a leftover test topic harms nobody
            pass


def run_kafka_script(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """Runs infra/kafka/kafka.sh; fails the test with its output when it fails."""
    done = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"kafka.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


@pytest.fixture
def kafka_script() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kafka_script("stop")`` runs infra/kafka/kafka.sh stop, failing the test if it fails."""
    return run_kafka_script


@pytest.fixture
def managed_kafka(kafka_bootstrap: str) -> str:
    """The bootstrap address, when that broker is the one infra/kafka/kafka.sh manages.

    Tests that stop and start the broker need it; against any other broker they skip
    (locally) or fail (in CI, where the script always starts the broker).
    """
    status = run_kafka_script("status").stdout
    if "kafka: running" not in status or kafka_bootstrap not in status:
        message = f"the broker at {kafka_bootstrap} is not managed by {KAFKA_SCRIPT}: {status}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return kafka_bootstrap


@pytest.fixture
def live_env(kafka_bootstrap: str, clickhouse_writer: Client, tmp_path: Path) -> Iterator[LiveEnv]:
    """A live test's namespace, databases (live and offline) and workers, cleaned up after."""
    yield from _live_env(LiveEnv(kafka_bootstrap, tmp_path))


@pytest.fixture
def live_env6(kafka_bootstrap: str, clickhouse_writer: Client, tmp_path: Path) -> Iterator[LiveEnv]:
    """Like ``live_env``, with six input partitions (a backlog spread as in production)."""
    yield from _live_env(LiveEnv(kafka_bootstrap, tmp_path, partitions=6))


def _live_env(env: LiveEnv) -> Iterator[LiveEnv]:
    with opened(env):
        yield env
