"""Consumer-group lag from the brokers' offsets: the computation and the gauges.

The poller's Kafka clients are stand-ins here (``connect``); the integration test
``tests/integration/test_alerts_bridge.py`` asks a real broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import GroupAuthorizationFailedError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from streams.metrics import BridgeMetrics
from streams.runtime.group_lag import (
    GroupLagPoller,
    GroupPartitionLag,
    default_groups,
    group_lag_rows,
)


def test_lag_is_end_minus_committed_for_each_committed_partition() -> None:
    rows = group_lag_rows(
        {
            "g2": {("in", 0): 5},
            "g1": {("in", 1): 7, ("in", 0): 10, ("in", 2): -1, ("gone", 0): 3},
        },
        {("in", 0): 12, ("in", 1): 7, ("in", 2): 4},
    )
    assert rows == [
        GroupPartitionLag("g1", "gone", 0, 3, None),
        GroupPartitionLag("g1", "in", 0, 10, 12),
        GroupPartitionLag("g1", "in", 1, 7, 7),
        GroupPartitionLag("g2", "in", 0, 5, 12),
    ]  # ("in", 2) of g1: nothing committed (-1), so no row
    assert [r.lag for r in rows] == [None, 2, 0, 7]


def test_a_commit_beyond_the_end_is_no_lag() -> None:
    # The end offset was read a moment before the commit that passed it.
    (row,) = group_lag_rows({"g": {("t", 0): 9}}, {("t", 0): 8})
    assert row.lag == 0


def test_the_default_groups_are_the_workers() -> None:
    assert default_groups("imgov-governance") == ("imgov-governance", "imgov-governance-kpi")


class Admin:
    def __init__(self, offsets: dict[str, dict[TopicPartition, OffsetAndMetadata]]) -> None:
        self.offsets = offsets
        self.failing: dict[str, Exception] = {}

    def list_group_offsets(self, group: str) -> dict[str, dict[TopicPartition, Any]]:
        if group in self.failing:
            raise self.failing[group]
        return {group: self.offsets.get(group, {})}

    def close(self) -> None:
        pass


class Consumer:
    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends
        self.asked: list[TopicPartition] = []

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.ends if tp.topic == topic}

    def end_offsets(
        self, partitions: Iterable[TopicPartition], timeout_ms: int
    ) -> dict[TopicPartition, int]:
        self.asked += partitions
        return {tp: self.ends[tp] for tp in partitions}

    def close(self) -> None:
        pass


def committed(**offsets: int) -> dict[TopicPartition, OffsetAndMetadata]:
    """``t_0=5`` -> partition 0 of topic ``t`` committed at 5."""
    out = {}
    for name, offset in offsets.items():
        topic, _, partition = name.rpartition("_")
        out[TopicPartition(topic, int(partition))] = OffsetAndMetadata(offset, "", -1)
    return out


def series(metrics: BridgeMetrics, name: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
        for family in metrics.registry.collect()
        if family.name == name
        for s in family.samples
    }


@pytest.fixture
def metrics() -> BridgeMetrics:
    return BridgeMetrics(CollectorRegistry())


def test_the_gauges_follow_the_brokers(metrics: BridgeMetrics) -> None:
    admin = Admin({"w": committed(inp_0=10, inp_1=4), "w-kpi": committed(contrib_0=3)})
    consumer = Consumer({TopicPartition("inp", 0): 15, TopicPartition("inp", 1): 4})
    poller = GroupLagPoller(
        "127.0.0.1:1", ["w", "w-kpi", "absent"], metrics, connect=lambda: (admin, consumer)
    )
    poller.poll_once()
    assert series(metrics, "imgov_group_lag_messages") == {
        ("w", "inp", "0"): 5,
        ("w", "inp", "1"): 0,
    }
    assert series(metrics, "imgov_group_end_offset") == {
        ("w", "inp", "0"): 15,
        ("w", "inp", "1"): 4,
    }
    # A topic the brokers do not know (deleted): its committed offset only, and its end
    # is never asked for (that would wait out the timeout).
    assert series(metrics, "imgov_group_committed_offset") == {
        ("w", "inp", "0"): 10,
        ("w", "inp", "1"): 4,
        ("w-kpi", "contrib", "0"): 3,
    }
    assert all(tp.topic == "inp" for tp in consumer.asked)

    # The group commits partition 0 and forgets partition 1: its series goes.
    admin.offsets["w"] = committed(inp_0=15)
    poller.poll_once()
    assert series(metrics, "imgov_group_lag_messages") == {("w", "inp", "0"): 0}
    assert ("w", "inp", "1") not in series(metrics, "imgov_group_committed_offset")


def test_a_group_that_fails_leaves_the_others(metrics: BridgeMetrics) -> None:
    admin = Admin({"a": committed(t_0=1), "b": committed(t_0=2)})
    admin.failing["a"] = GroupAuthorizationFailedError()
    poller = GroupLagPoller(
        "127.0.0.1:1",
        ["a", "b"],
        metrics,
        connect=lambda: (admin, Consumer({TopicPartition("t", 0): 5})),
    )
    rows = poller.poll_once()
    assert rows == [GroupPartitionLag("b", "t", 0, 2, 5)]


def test_brokers_that_do_not_answer_withdraw_the_series_until_they_do(
    metrics: BridgeMetrics,
) -> None:
    admin = Admin({"w": committed(t_0=1)})
    consumer = Consumer({TopicPartition("t", 0): 3})
    connects = []

    def connect() -> tuple[Admin, Consumer]:
        connects.append(1)
        return admin, consumer

    poller = GroupLagPoller("127.0.0.1:1", ["w"], metrics, connect=connect)
    assert poller.poll_once() is not None
    assert series(metrics, "imgov_group_lag_messages") == {("w", "t", "0"): 2}

    admin.failing["w"] = KafkaTimeoutError("Failed to update metadata after 5.0 secs")
    assert poller.poll_once() is None  # unknown, not zero: no series
    assert series(metrics, "imgov_group_lag_messages") == {}
    assert series(metrics, "imgov_group_committed_offset") == {}

    del admin.failing["w"]
    assert poller.poll_once() is not None  # reconnected
    assert len(connects) == 2
    assert series(metrics, "imgov_group_lag_messages") == {("w", "t", "0"): 2}
