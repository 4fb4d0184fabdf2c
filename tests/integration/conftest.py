"""Fixtures for tests against the real Kafka broker and ClickHouse server.

The services are started by ``make up`` (``infra/kafka/kafka.sh`` and
``infra/clickhouse/clickhouse.sh``). Outside CI a missing service skips its tests, so a
developer can run the unit suite alone; in CI (``CI=true``) a missing service is a
failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

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
