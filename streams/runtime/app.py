"""The Faust application of the live pipeline: topics, tables, agents, the idle timer.

Topology (names behind the optional ``topic_namespace``)::

    imaging.ai.inference.v1 ┐                       ┌─> governance.lineage.v1 (key: lineage row)
    imaging.ai.alert.v1 ────┼─> agent imgov-lineage ┼─> governance.review.v1
    imaging.report.v1 ──────┘   table lineage-state ├─> governance.dlq.v1 (bad input, bytes kept)
     (co-partitioned by study)  (RocksDB+changelog) ├─> ClickHouse event_log, lineage_history,
                                                    │   review_candidates, rejected_events
                                                    ├─> governance.audit.checkpoint.v1 and
                                                    │   ClickHouse audit_checkpoints (timer)
                                                    └─> imgov.internal.kpi-contributions.v1
                                                         (key: algorithm|finding)
                                                              │
                          agent imgov-kpi, table kpi-state <──┘
                          ├─> governance.kpi.v1, governance.breach.v1
                          └─> ClickHouse kpi_values, kpi_breaches

The lineage state table holds one encoded ``StudyState`` per study; the KPI state table
holds the latest lineage revision applied per row plus one snapshot (versioned data) of the
``KpiAggregator`` and ``BreachEvaluator`` per contributions partition (see
``streams.runtime.stages.kpi``). Both tables are changelog-backed Faust tables (RocksDB via
rocksdict by default) and are written only after the sink flushed (``agents``).

A worker runs both agents (role ``all``), or one of them (roles ``lineage`` and ``kpi``,
separate processes and consumer groups, which scale and take a core each).

Windows close on the KPI watermark (event time), which the lineage agent derives per
input partition (the minimum over its topics) and sends to every contributions
partition; it pauses the input partitions that run ahead of the slowest, so that a
backlog is read in roughly event-time order. When input stops, the idle timer
closes every window, like the end of an offline replay: once no input arrived for
``idle_close_s`` and the consumer group has committed every input offset (so no other
worker is still busy), it sends a close marker to every contributions partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, cast

import faust
from faust.types import TP

from schemas.codec import Codec
from schemas.registry import registry_from_environ
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend
from streams.core.kpi.aggregator import KpiAggregator
from streams.governance import (
    GovernanceSettings,
    build_breach_evaluator,
    build_pseudonymiser,
    build_validator,
    checkpoint_keyring,
    lineage_config,
    wall_clock_ms,
)
from streams.kafka_security import KafkaSecurity
from streams.metrics import WorkerMetrics
from streams.runtime.agents import KpiRunner, LineageRunner, SinkFlusher, WorkerIO
from streams.runtime.anchor import CheckpointAnchor
from streams.runtime.faust_fixes import apply_faust_commit_fixes
from streams.runtime.faust_store import FaustTableStore
from streams.runtime.outputs import OutgoingMessage, OutputEncoder
from streams.runtime.settings import KafkaSettings, WorkerSettings
from streams.runtime.staged_store import StagedMapping
from streams.runtime.stages import KpiStage, LineageStage
from streams.runtime.telemetry import CommitSensor, WorkerTelemetry
from streams.runtime.topic_admin import TopicSpec, load_topics, replicated
from streams.topics import (
    INPUT_TOPICS,
    KPI_AGENT,
    KPI_TABLE,
    LINEAGE_AGENT,
    LINEAGE_TABLE,
    WorkerTopics,
)

__all__ = ["GroupProgress", "build_app", "set_paused"]

log = logging.getLogger("imgov.worker")

_SINK_OPTIONS: dict[str, Any] = {
    # The agents flush once per batch; the sink never writes from inside add().
    "max_batch_rows": 5_000_000,
    "max_buffer_rows": 5_000_000,
    "flush_timeout_s": 2.0,
    "retry_max_s": 2.0,
}


class GroupProgress:
    """What the consumer group has not committed yet of its inputs (blocking; threads)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: tuple[str, ...],
        security: KafkaSecurity | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security or KafkaSecurity()
        self._group = group
        self._topics = topics
        self._admin: Any = None
        self._consumer: Any = None

    def lagging(self) -> dict[tuple[str, int], int] | None:
        """Per input ``(topic, partition)`` with messages not committed yet: the
        committed offset (0 if none). Empty when the group has committed everything;
        None when the brokers could not be asked."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        try:
            if self._admin is None:
                options = self._security.client_options()
                self._admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, **options)
                self._consumer = KafkaConsumer(bootstrap_servers=self._bootstrap, **options)
            tps = [
                TopicPartition(topic, p)
                for topic in self._topics
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            ends = self._consumer.end_offsets(tps)
            committed = self._admin.list_group_offsets(self._group).get(self._group, {})
        except Exception as exc:  # any client error: not known to be caught up
            log.info("idle check failed (%s); will retry", exc)
            self.close()
            return None
        lagging = {}
        for tp in tps:
            done = committed.get(tp)
            offset = 0 if done is None or done.offset < 0 else done.offset
            if offset < ends.get(tp, 0):
                lagging[(tp.topic, tp.partition)] = offset
        return lagging

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._admin = self._consumer = None


class CommitStallGuard:
    """Re-reads a partition whose commit is stuck behind a message never delivered.

    The delivery races that left such gaps after a rebalance or a recovery are fixed in
    Faust's consumer (``faust_fixes``), so this is a backstop for ones not known yet,
    in two forms. ``check``: when a partition's acknowledged offsets stay beyond its
    committed offset at two consecutive checks, a message before them was never
    delivered. ``check_idle``: when the input has been idle and the group's commits of
    a partition stay behind its end at two consecutive idle checks, with nothing
    acknowledged beyond them, the messages were fetched (the consumer's position moved
    past them) and dropped before delivery: seen after a worker left the group, on
    partitions that were neither paused nor sought (1 run in about 6 of the 1-2-1
    scaling test, every uncommitted message of 6 partitions), and on a contributions
    partition (its last message, a close marker; the KPI agent has a guard of its own
    for that topic). Either way it logs an
    error and seeks back to the committed offset. The stages apply each offset
    exactly once (``streams.runtime.applied``), so the re-read fills the gap and
    changes nothing else.
    """

    def __init__(self, app: faust.App, topics: tuple[str, ...]) -> None:
        self._app = app
        self._topics = set(topics)
        self._suspects: dict[Any, int] = {}
        self._idle_suspects: dict[tuple[str, int], int] = {}

    async def check_idle(self, lagging: dict[tuple[str, int], int]) -> None:
        """``lagging``: per input partition behind its end, the group's committed
        offset (``GroupProgress.lagging``), taken while no input arrived."""
        consumer = self._app.consumer
        assigned = consumer.assignment()
        paused = getattr(consumer, "_paused_partitions", set())
        sought = set()
        for (topic, partition), committed in lagging.items():
            tp = TP(topic, partition)
            if (
                self._idle_suspects.get((topic, partition)) == committed
                and tp in assigned
                and tp not in paused
            ):
                log.error(
                    "input idle, but commits of %s stay at offset %d below its end:"
                    " messages fetched and never delivered; re-reading from there",
                    tp,
                    committed,
                )
                await consumer.seek(tp, committed)
                sought.add((topic, partition))
        # A partition just sought gets two more checks to deliver before the next seek.
        self._idle_suspects = {s: c for s, c in lagging.items() if s not in sought}

    async def check(self) -> None:
        consumer = self._app.consumer
        acked = getattr(consumer, "_acked", {})
        committed_by_tp = getattr(consumer, "_committed_offset", {})
        stuck: dict[Any, int] = {}
        for tp, offsets in list(acked.items()):
            if tp.topic not in self._topics or not offsets:
                continue
            committed = committed_by_tp.get(tp)
            if committed is not None and min(offsets) > committed:
                stuck[tp] = committed
        sought = set()
        for tp, committed in stuck.items():
            if self._suspects.get(tp) == committed and tp in consumer.assignment():
                log.error(
                    "commits of %s stuck at offset %d, a message Faust never delivered:"
                    " re-reading from there",
                    tp,
                    committed,
                )
                await consumer.seek(tp, committed)
                sought.add(tp)
        # As in check_idle: the re-read is acknowledged at the next checkpoint and
        # committed after it, so a partition just sought gets two more checks to catch
        # up before it is sought again (once, a second seek re-read 494 messages).
        self._suspects = {tp: c for tp, c in stuck.items() if tp not in sought}


def set_paused(consumer: Any, tps: set[TP], *, paused: bool) -> None:
    """Pauses (or resumes) fetching from ``tps``, copy-on-write.

    Faust's ``pause_partitions`` removes partitions from its set of active partitions
    in place, and a fetch in flight keeps only the records of partitions still in that
    same set object: the records of a partition paused meanwhile are dropped, though
    the consumer's position moved past them, and the partition's commits stall on the
    gap. A new set leaves the fetch in flight its own; the next one uses the new set.
    """
    active = set(consumer._get_active_partitions())
    if paused:
        consumer._paused_partitions = consumer._paused_partitions | tps
        active -= tps
    else:
        consumer._paused_partitions = consumer._paused_partitions - tps
        active |= tps & set(consumer.assignment())
    consumer._active_partitions = active


def _internal_topics(kafka: KafkaSettings) -> TopicSpec:
    """The replication of Faust's own topics (table changelogs, the assignor's leader
    topic): that of the input topics, i.e. ``IMGOV_KAFKA_REPLICATION_FACTOR`` and
    ``IMGOV_KAFKA_MIN_INSYNC_REPLICAS`` over ``infra/kafka/topics.toml``. A changelog
    with one replica would lose the worker's state with its broker.
    """
    return replicated(
        load_topics().get(INPUT_TOPICS[0]), kafka.replication_factor, kafka.min_insync_replicas
    )


def _idempotent_faust_producer() -> None:
    """Makes Faust's producer idempotent, as every imgov producer is.

    faust-streaming 0.15.3 passes ``acks`` (``producer_acks=-1``: all in-sync replicas)
    to aiokafka but sets ``enable_idempotence`` only inside a transaction
    (``Producer._settings_extra``), and has no setting for it. Without it a retried
    send after a broker failover (the request was written, the answer lost) writes the
    batch twice. Idempotent, the broker drops the duplicate by producer id and sequence.
    Idempotent and keeps Faust's method as ``__wrapped__``.
    """
    from faust.transport.drivers import aiokafka as driver

    original = driver.Producer._settings_extra
    if hasattr(original, "__wrapped__"):
        return

    @functools.wraps(original)
    def _settings_extra(self: Any) -> Mapping[str, Any]:
        return {"acks": "all", "enable_idempotence": True, **original(self)}

    driver.Producer._settings_extra = _settings_extra  # type: ignore[method-assign]


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def build_app(
    worker: WorkerSettings,
    governance: GovernanceSettings,
    kafka: KafkaSettings,
    clickhouse: ClickHouseSettings,
    metrics: WorkerMetrics | None = None,
) -> faust.App:
    """Returns the Faust app of ``worker.role`` with its tables, agents and timers.

    Nothing runs yet. Role ``all`` has both stages; ``lineage`` and ``kpi`` one each,
    the KPI one as consumer group ``<app_id>-kpi`` (see ``WorkerSettings.role``). The
    app reports to ``metrics`` (which ``run_worker`` serves) when given.

    Raises:
        ConfigurationError: governance settings are invalid (e.g. no pseudonym key).
    """
    apply_faust_commit_fixes()
    _idempotent_faust_producer()
    topics = WorkerTopics.with_namespace(worker.topic_namespace)
    app = faust.App(
        worker.group_id,
        broker=_broker_url(kafka.bootstrap),
        # TLS and SASL for every client Faust opens (consumer, producers, topic admin).
        broker_credentials=kafka.security().faust_credentials(),
        store="rocksdb://" if worker.store == "rocksdb" else "memory://",
        # Per group: Faust keeps each table's changelog offset in its RocksDB files
        # without the topic's name, so state of another app id must never be reopened.
        datadir=str(worker.datadir / worker.group_id),
        web_enabled=worker.web_enabled,
        web_bind=worker.web_host,
        web_host=worker.web_host,
        web_port=worker.web_port,
        topic_partitions=worker.partitions,
        topic_replication_factor=_internal_topics(kafka).replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=worker.commit_interval_s,
        consumer_group_instance_id=worker.group_instance_id,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=worker.heartbeat_interval_s,
        broker_max_poll_interval=worker.max_poll_interval_s,
        # The agents acknowledge what they finished themselves, and a graceful stop
        # drains them first (``streams.runtime.stop``); messages Faust buffered but
        # never handed over are read again after a restart, so nothing waits for them.
        stream_wait_empty=False,
        table_standby_replicas=0,
        producer_acks=-1,  # and idempotent: _idempotent_faust_producer
        # The KPI state topic takes 8 MiB messages (its snapshots); so must requests.
        producer_max_request_size=8 * 1024 * 1024,
    )
    codec = Codec(registry_from_environ(os.environ), validator=build_validator(governance))

    def send(message: OutgoingMessage) -> Any:
        return app.producer.send(
            message.topic,
            message.key,
            message.value,
            message.partition,
            None,
            cast(Any, list(message.headers)) or None,
        )

    def highwater(topic: str, partition: int) -> int | None:
        try:
            end = app.consumer.highwater(TP(topic, partition))
        except (AssertionError, KeyError, AttributeError):  # not assigned (any more)
            return None
        return None if end is None else int(end)

    telemetry = None if metrics is None else WorkerTelemetry(metrics)
    io = WorkerIO(
        send=send,
        flush=lambda: app.producer.flush(),
        assignment=lambda: frozenset(app.consumer.assignment()),
        encoder=OutputEncoder(codec, topics),
        pause=lambda sources: set_paused(app.consumer, {TP(*s) for s in sources}, paused=True),
        resume=lambda sources: set_paused(app.consumer, {TP(*s) for s in sources}, paused=False),
        highwater=highwater,
        settled=lambda: not (app.rebalancing or app.in_recovery),
        unsettled=lambda: frozenset(app.consumer._unsettled),
        committed=lambda: dict(app.consumer._committed_offset),
        telemetry=telemetry,
    )
    lineage, kpi = worker.role in ("all", "lineage"), worker.role in ("all", "kpi")
    consumed = (*(topics.inputs if lineage else ()), *((topics.contributions,) if kpi else ()))
    stalls = CommitStallGuard(app, consumed)
    if lineage:
        _add_lineage(app, worker, governance, kafka, clickhouse, codec, io, stalls)
    if kpi:
        _add_kpi(app, worker, governance, kafka, clickhouse, codec, io)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def commit_stalls() -> None:
        await stalls.check()

    if telemetry is not None:
        _add_telemetry(app, telemetry, consumed)
    return app


def _add_telemetry(app: faust.App, telemetry: WorkerTelemetry, consumed: tuple[str, ...]) -> None:
    """The commit sensor and the timer that samples the gauges (offsets, state)."""
    app.sensors.add(CommitSensor(telemetry))
    topics = set(consumed)

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def sample_metrics() -> None:
        consumer = app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        rows = []
        for tp in sorted(consumer.assignment()):
            if tp.topic not in topics:
                continue  # the tables' changelogs: progress of recovery, not of input
            try:
                end = consumer.highwater(tp)
            except (AssertionError, KeyError, AttributeError):
                end = None
            rows.append((tp.topic, tp.partition, committed.get(tp), end))
        telemetry.sample(
            rows,
            getattr(app, "imgov_lineage", None),
            getattr(app, "imgov_kpi", None),
        )


_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def _table(
    app: faust.App,
    name: str,
    partitions: int,
    kafka: KafkaSettings,
    topic_configs: Mapping[str, str] | None = None,
) -> FaustTableStore:
    # The changelog gets the inputs' min.insync.replicas (its replication factor is the
    # app's topic_replication_factor); their other configs (retention) are theirs only.
    inputs = _internal_topics(kafka).config
    configs = {k: v for k, v in inputs.items() if k == "min.insync.replicas"}
    configs.update(topic_configs or {})
    table = app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        extra_topic_configs=configs,
    )
    return FaustTableStore(table)


def _new_sink(clickhouse: ClickHouseSettings, name: str, io: WorkerIO) -> SinkFlusher:
    sink = ClickHouseSink.from_settings(clickhouse, **_SINK_OPTIONS)
    return SinkFlusher(sink, name, io.telemetry)


def _add_lineage(
    app: faust.App,
    worker: WorkerSettings,
    governance: GovernanceSettings,
    kafka: KafkaSettings,
    clickhouse: ClickHouseSettings,
    codec: Codec,
    io: WorkerIO,
    stalls: CommitStallGuard,
) -> None:
    """The lineage agent, its table and the idle timer that closes every KPI window
    (or, while the group has not committed every input, has ``stalls`` look why)."""
    topics = WorkerTopics.with_namespace(worker.topic_namespace)
    inputs = app.topic(*topics.inputs, **_RAW)
    store = _table(app, LINEAGE_TABLE, worker.partitions, kafka)
    runner = LineageRunner(
        io=io,
        stage=LineageStage(
            lineage_config(governance),
            governance.kpi.allowed_lateness_ms,
            codec,
            StagedMapping(store),
            build_pseudonymiser(governance),
            wall_clock_ms,
            topics.inputs,
        ),
        store=store,
        sink=_new_sink(clickhouse, "lineage", io),
        input_topics=topics.inputs,
        contributions_partitions=worker.partitions,
        source_idle_s=worker.source_idle_s,
        align_skew_ms=worker.align_skew_ms,
        anchor=CheckpointAnchor(
            keyring=checkpoint_keyring(governance),
            connect=lambda: ClickHouseBackend.connect(clickhouse),
            interval_s=worker.audit_checkpoint_interval_s,
            wall_clock_ms=wall_clock_ms,
        ),
    )
    progress = GroupProgress(kafka.bootstrap, worker.group_id, topics.inputs, kafka.security())
    app.imgov_lineage = runner  # type: ignore[attr-defined]

    @app.agent(inputs, name=LINEAGE_AGENT)
    async def lineage_agent(stream: Any) -> None:
        async for events in stream.noack_take(worker.batch_size, within=worker.batch_within_s):
            await runner.lineage_batch(events, stream.ack)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def watermark_tick() -> None:
        await runner.watermark_tick()

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def audit_tick() -> None:
        await runner.audit_tick()

    @app.timer(interval=max(1.0, min(worker.idle_close_s / 2, 5.0)))  # type: ignore[untyped-decorator]
    async def idle_close() -> None:
        if runner.closed_since_input or runner.in_flight:
            return
        if time.monotonic() - runner.last_input_s < worker.idle_close_s:
            return
        lagging = await asyncio.to_thread(progress.lagging)
        if lagging is None:
            return
        if lagging:
            await stalls.check_idle(lagging)
            return
        log.info("input idle and committed: closing every KPI window")
        await runner.send_close_markers(worker.partitions)


def _add_kpi(
    app: faust.App,
    worker: WorkerSettings,
    governance: GovernanceSettings,
    kafka: KafkaSettings,
    clickhouse: ClickHouseSettings,
    codec: Codec,
    io: WorkerIO,
) -> None:
    """The KPI agent, its table, the timer that paces current values and checkpoints,
    and the idle timer that has a stall guard of its own look at contributions the
    group has not committed while none arrive."""
    topics = WorkerTopics.with_namespace(worker.topic_namespace)
    contributions = app.topic(topics.contributions, partitions=worker.partitions, **_RAW)
    # KPI snapshots are one message per partition and grow with the series kept.
    store = _table(app, KPI_TABLE, worker.partitions, kafka, {"max.message.bytes": "8388608"})
    kpi_config = governance.kpi
    breach_template = build_breach_evaluator(governance)
    runner = KpiRunner(
        io=io,
        stage=KpiStage(
            codec,
            StagedMapping(store),
            StagedMapping(store),
            lambda: KpiAggregator(kpi_config, current_on_demand=True),
            lambda: copy.deepcopy(breach_template),
            upstream_partitions=worker.partitions,
            topic=topics.contributions,
        ),
        store=store,
        sink=_new_sink(clickhouse, "kpi", io),
        current_interval_s=worker.current_interval_s,
        checkpoint_interval_s=worker.checkpoint_interval_s,
        rebalancing=lambda: bool(app.rebalancing),
    )
    app.imgov_kpi = runner  # type: ignore[attr-defined]

    @app.agent(contributions, name=KPI_AGENT)
    async def kpi_agent(stream: Any) -> None:
        async for events in stream.noack_take(worker.batch_size, within=worker.batch_within_s):
            await runner.kpi_batch(events, stream.ack)

    @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
    async def kpi_tick() -> None:
        await runner.kpi_tick()

    # The lineage stage's idle check covers the input topics only. A contributions
    # message fetched and never delivered (seen once: a close marker, the last message
    # of its partition) leaves the KPI agent idle with its commit one short of the end
    # for good, and the windows of that partition never close.
    progress = GroupProgress(
        kafka.bootstrap, worker.group_id, (topics.contributions,), kafka.security()
    )
    stalls = CommitStallGuard(app, (topics.contributions,))

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def kpi_stalls() -> None:
        if runner.kpi_unacknowledged or app.rebalancing or app.in_recovery:
            return
        if time.monotonic() - runner.last_batch_s < worker.source_idle_s:
            return
        lagging = await asyncio.to_thread(progress.lagging)
        if lagging:
            await stalls.check_idle(lagging)
