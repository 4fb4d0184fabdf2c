"""Replication settings (``IMGOV_KAFKA_REPLICATION_FACTOR`` / ``_MIN_INSYNC_REPLICAS``):
validation, what topic creation asks the broker for, and how a refusal reads.

No broker: topic creation runs against a recording admin client; the cluster test
(tests/cluster/test_kafka_topics_cluster.py) checks the same on three real brokers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.cli.main import app as cli
from streams.runtime.settings import KafkaConfigError, KafkaSettings, load_kafka_settings
from streams.runtime.topic_admin import (
    TopicAdminError,
    TopicRole,
    TopicsError,
    TopicSpec,
    create_topics,
    load_topics,
    replicated,
)


@pytest.fixture(autouse=True)
def _no_kafka_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(KafkaSettings.model_fields):
        monkeypatch.delenv(f"IMGOV_KAFKA_{name.upper()}", raising=False)


class _RecordingAdmin:
    """Answers CreateTopics with ``error`` for every topic (0: created)."""

    def __init__(self, error: int = 0, message: str | None = None) -> None:
        self.error, self.message = error, message
        self.requests: list[Mapping[str, Mapping[str, Any]]] = []

    def create_topics(self, new_topics: Mapping[str, Mapping[str, Any]], **_: Any) -> Any:
        self.requests.append(new_topics)
        return {
            "topics": [
                {"name": n, "error_code": self.error, "error_message": self.message}
                for n in new_topics
            ]
        }

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        return []

    def wait_for_topics(self, topic_names: list[str], timeout_ms: int = 0) -> None:
        return None

    def close(self) -> None:
        return None


def _spec(**config: str) -> TopicSpec:
    return TopicSpec(
        name="t", role=TopicRole.OUTPUT, partitions=2, replication_factor=1, config=config
    )


def test_settings_read_replication_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_kafka_settings().replication_factor is None
    assert load_kafka_settings().min_insync_replicas is None
    monkeypatch.setenv("IMGOV_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("IMGOV_KAFKA_MIN_INSYNC_REPLICAS", "2")
    kafka = load_kafka_settings()
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (
            {"replication_factor": 2, "min_insync_replicas": 3},
            "IMGOV_KAFKA_MIN_INSYNC_REPLICAS (3)",
        ),
        ({"replication_factor": 0}, "IMGOV_KAFKA_REPLICATION_FACTOR"),
        ({"min_insync_replicas": 0}, "IMGOV_KAFKA_MIN_INSYNC_REPLICAS"),
    ],
)
def test_settings_refuse_impossible_replication(given: dict[str, int], named: str) -> None:
    with pytest.raises(KafkaConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_kafka_settings(**given)


def test_replicated_applies_the_settings_over_the_file() -> None:
    spec = _spec(**{"cleanup.policy": "delete"})
    assert replicated(spec, None, None) == spec
    cluster = replicated(spec, 3, 2)
    assert cluster.replication_factor == 3
    assert cluster.config == {"cleanup.policy": "delete", "min.insync.replicas": "2"}


def test_a_min_insync_above_a_topics_replication_is_refused_before_any_request() -> None:
    admin = _RecordingAdmin()
    with pytest.raises(TopicsError, match="IMGOV_KAFKA_MIN_INSYNC_REPLICAS"):
        create_topics("unused:1", [_spec()], min_insync_replicas=2, admin=admin)
    assert admin.requests == []


def test_every_pipeline_topic_is_requested_with_the_cluster_replication() -> None:
    admin = _RecordingAdmin()
    create_topics(
        "unused:1", load_topics(), replication_factor=3, min_insync_replicas=2, admin=admin
    )
    (request,) = admin.requests
    assert len(request) >= 8
    for name, body in request.items():
        assert body["replication_factor"] == 3, name
        assert body["configs"]["min.insync.replicas"] == "2", name


def test_too_few_brokers_is_named_with_the_setting() -> None:
    refusal = (
        "Unable to replicate the partition 3 time(s): The target replication factor of 3"
        " cannot be reached because only 1 broker(s) are registered."
    )
    admin = _RecordingAdmin(error=38, message=refusal)
    with pytest.raises(TopicAdminError) as refused:
        create_topics("unused:1", [_spec()], replication_factor=3, admin=admin)
    text = str(refused.value)
    assert "only 1 broker(s)" in text
    assert "IMGOV_KAFKA_REPLICATION_FACTOR" in text


def test_topics_create_refuses_a_min_insync_above_the_replication_factor() -> None:
    result = CliRunner().invoke(
        cli, ["topics", "create", "--replication-factor", "2", "--min-insync-replicas", "3"]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # rich wraps lines
    assert "IMGOV_KAFKA_MIN_INSYNC_REPLICAS (3) must be at most" in text


def test_faust_internal_topics_follow_the_settings() -> None:
    from streams.runtime.app import _internal_topics

    single = _internal_topics(load_kafka_settings())
    assert single.replication_factor == load_topics().topics[0].replication_factor
    cluster = _internal_topics(load_kafka_settings(replication_factor=3, min_insync_replicas=2))
    assert cluster.replication_factor == 3
    assert cluster.config["min.insync.replicas"] == "2"
