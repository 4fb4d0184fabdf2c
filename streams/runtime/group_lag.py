"""Consumer-group lag as the brokers see it, for ``imgov alerts`` (DESIGN §12).

A worker reports the lag of the partitions it owns (``imgov_consumer_lag_messages``);
when every worker is down nobody does, and that is when the lag grows. The bridge asks
the brokers instead: each group's committed offsets (``OffsetFetch``, through
kafka-python's ``KafkaAdminClient.list_group_offsets``) and the partitions' end offsets
(``KafkaConsumer.end_offsets``), every few seconds, into ``imgov_group_lag_messages``,
``imgov_group_committed_offset`` and ``imgov_group_end_offset`` {group, topic,
partition}. The lag alert rules read these.

A series exists for each partition a group has committed an offset for: a group that
does not exist (or never committed) has none. While the brokers cannot be asked the
series are withdrawn (unknown is not zero), and they come back with the next answer.
The clients block, so the poller runs in a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import BrokerResponseError

from streams.kafka_security import KafkaSecurity
from streams.topics import KPI_GROUP_SUFFIX

if TYPE_CHECKING:
    from streams.metrics import BridgeMetrics

__all__ = [
    "GroupLagPoller",
    "GroupPartitionLag",
    "brokers_reachable",
    "default_groups",
    "group_lag_rows",
]

log = logging.getLogger("imgov.alerts.lag")


@dataclass(frozen=True, slots=True)
class GroupPartitionLag:
    """One partition a group committed an offset for.

    Attributes:
        committed: the group's committed offset (the next message it will read).
        end: the partition's end offset; None when it could not be had (topic deleted).
    """

    group: str
    topic: str
    partition: int
    committed: int
    end: int | None

    @property
    def lag(self) -> int | None:
        """Messages the group has not committed yet; None when ``end`` is unknown."""
        return None if self.end is None else max(self.end - self.committed, 0)

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.group, self.topic, str(self.partition))


def brokers_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a server of ``bootstrap`` (``host:port[,host:port]``) accepts a TCP
    connection.

    Asked before opening a kafka-python client: a ``KafkaConsumer`` or
    ``KafkaAdminClient`` that cannot bootstrap raises from its constructor and leaves
    its network thread running (kafka-python 3.0.12), so retrying a constructor through
    a long outage would pile the threads up.
    """
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def default_groups(app_id: str) -> tuple[str, str]:
    """The worker's consumer groups: the app id (roles ``all``, ``lineage``) and its
    ``kpi`` role's group."""
    return (app_id, app_id + KPI_GROUP_SUFFIX)


def group_lag_rows(
    committed: Mapping[str, Mapping[tuple[str, int], int]],
    ends: Mapping[tuple[str, int], int],
) -> list[GroupPartitionLag]:
    """The lag of every partition each group committed, sorted by group, topic, partition.

    Args:
        committed: per group, ``(topic, partition) -> committed offset``; a negative
            offset (Kafka's "none") is left out.
        ends: ``(topic, partition) -> end offset`` of every partition known.
    """
    rows = [
        GroupPartitionLag(group, topic, partition, offset, ends.get((topic, partition)))
        for group, offsets in committed.items()
        for (topic, partition), offset in offsets.items()
        if offset >= 0
    ]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


class GroupLagPoller:
    """Polls the brokers for the groups' offsets and sets the bridge's gauges.

    Args:
        bootstrap: the brokers.
        groups: the consumer groups to watch.
        metrics: where the gauges are.
        timeout_ms: bound on each request (a broker that is down costs this per poll).
        connect: opens ``(admin, consumer)``: kafka-python's ``KafkaAdminClient`` and
            ``KafkaConsumer`` unless given (tests give stand-ins).
        security: TLS and SASL of those clients (PLAINTEXT when omitted).
    """

    def __init__(
        self,
        bootstrap: str,
        groups: Sequence[str],
        metrics: BridgeMetrics,
        timeout_ms: int = 5_000,
        connect: Callable[[], tuple[Any, Any]] | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security or KafkaSecurity()
        self._groups = tuple(dict.fromkeys(groups))
        self._metrics = metrics
        self._timeout_ms = timeout_ms
        self._connect = connect or self._kafka_clients
        self._admin: Any = None
        self._consumer: Any = None
        self._shown: set[tuple[str, str, str]] = set()
        self._failing = False

    def _kafka_clients(self) -> tuple[KafkaAdminClient, KafkaConsumer]:
        if not brokers_reachable(self._bootstrap):
            raise ConnectionError(f"no broker of {self._bootstrap} accepts connections")
        common = {
            "bootstrap_servers": self._bootstrap,
            "client_id": "imgov-alerts-lag",
            "request_timeout_ms": self._timeout_ms,
            "bootstrap_timeout_ms": self._timeout_ms,
            **self._security.client_options(),
        }
        admin = KafkaAdminClient(**common)
        try:
            return admin, KafkaConsumer(**common, enable_auto_commit=False)
        except Exception:
            admin.close()
            raise

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Polls every ``interval_s`` until ``stop`` is set (the body of a thread)."""
        try:
            while not stop.is_set():
                self.poll_once()
                stop.wait(interval_s)
        finally:
            self.close()

    def poll_once(self) -> list[GroupPartitionLag] | None:
        """Asks the brokers once and updates the gauges; returns the rows, or None (and
        withdraws the series) when the brokers could not be asked."""
        try:
            rows = self._fetch()
        except Exception as exc:  # any client failure: the bridge must outlive the brokers
            # Said once per outage, not at every poll.
            (log.debug if self._failing else log.warning)(
                "consumer-group offsets unavailable from %s: %s", self._bootstrap, exc
            )
            self._failing = True
            self.close()
            self._show(())
            return None
        if self._failing:
            log.info("consumer-group offsets available again from %s", self._bootstrap)
            self._failing = False
        self._show(rows)
        return rows

    def _fetch(self) -> list[GroupPartitionLag]:
        if self._admin is None:
            self._admin, self._consumer = self._connect()
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for group in self._groups:
            # One request per group: an error of one group leaves the others reported.
            try:
                answer = self._admin.list_group_offsets(group).get(group, {})
            except BrokerResponseError as exc:  # about this group; not a broker that is down
                log.warning("offsets of consumer group %s unavailable: %s", group, exc)
                continue
            committed[group] = {(tp.topic, tp.partition): oam.offset for tp, oam in answer.items()}
        wanted = {tp for offsets in committed.values() for tp in offsets}
        return group_lag_rows(committed, self._end_offsets(wanted))

    def _end_offsets(self, wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        # end_offsets of a partition that does not exist waits out the timeout: ask only
        # for partitions of topics the brokers know (a group may remember deleted ones).
        known: dict[str, set[int]] = {}
        tps = []
        for topic, partition in sorted(set(wanted)):
            if topic not in known:
                known[topic] = set(self._consumer.partitions_for_topic(topic) or ())
            if partition in known[topic]:
                tps.append(TopicPartition(topic, partition))
        if not tps:
            return {}
        ends = self._consumer.end_offsets(tps, timeout_ms=self._timeout_ms)
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}

    def _show(self, rows: Iterable[GroupPartitionLag]) -> None:
        """Sets the gauges to ``rows``; series of partitions no longer reported go away
        (removed after the new values are set, so a scrape never sees a gap)."""
        m = self._metrics
        shown = set()
        for row in rows:
            shown.add(row.labels)
            m.group_committed.labels(*row.labels).set(row.committed)
            if row.end is not None and row.lag is not None:
                m.group_end.labels(*row.labels).set(row.end)
                m.group_lag.labels(*row.labels).set(row.lag)
            else:
                for gauge in (m.group_end, m.group_lag):
                    with contextlib.suppress(KeyError):
                        gauge.remove(*row.labels)
        for labels in self._shown - shown:
            for gauge in (m.group_committed, m.group_end, m.group_lag):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._shown = shown

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._admin = self._consumer = None
