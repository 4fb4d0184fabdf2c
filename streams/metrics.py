"""The Prometheus metrics of imgov's long-running processes (DESIGN §12): one catalogue.

Every process serves its own registry over HTTP (``serve_metrics``), on 127.0.0.1 by
default. Names follow Prometheus conventions: the ``imgov_`` prefix, base units in the
name (``_seconds``, ``_bytes``, ``_messages``), ``_total`` on counters, and
``_timestamp_seconds`` on gauges holding a Unix time (PromQL takes ``time() - x``).
Label sets are bounded: topic, partition, stage, sink, table, reason, severity, rule,
protocol, outcome, group. No label ever carries a study, patient, accession, report or
event identifier, or a site or algorithm name (those belong to the audit tables and
the governance alerts, whose label sets Alertmanager owns).

The catalogue, by process (``imgov_build_info`` and the client library's
``process_*`` and ``python_*`` families are on every one):

Worker (``WorkerMetrics``)
    ``imgov_input_messages_total{topic,partition}``: input messages applied by a stage.
    ``imgov_consumer_committed_offset{topic,partition}``, ``imgov_consumer_end_offset``,
    ``imgov_consumer_lag_messages``: the assigned partitions' progress, as this worker's
    consumer knows it. ``imgov_consumer_last_commit_timestamp_seconds{topic,partition}``:
    when the committed offset last moved. ``imgov_rebalances_total``.
    ``imgov_watermark_lag_seconds{stage}``: wall clock minus the stage's event-time
    watermark. ``imgov_batch_duration_seconds{stage}``: one batch, taken to acknowledged.
    ``imgov_output_messages_total{topic}``; ``imgov_dead_letters_total{stage,reason}``.
    ``imgov_clickhouse_flush_duration_seconds{sink}``,
    ``imgov_clickhouse_rows_written_total{table}``,
    ``imgov_clickhouse_last_flush_timestamp_seconds{sink}``,
    ``imgov_clickhouse_errors_total{sink,kind}`` (``unavailable``, ``rejected``),
    ``imgov_sink_backpressure{sink}`` (1 while ClickHouse is down and offsets are held).
    Poison batches (``sinks.refusals``): ``imgov_sink_poison_batches_total{table}``
    (batches ClickHouse refused for some of their values, then split),
    ``imgov_sink_rows_rejected_total{table}`` (rows it refused: dead-lettered as
    ``SINK_REJECTED``, or for ``rejected_events`` escaped and written again),
    ``imgov_sink_split_inserts_total{table}`` (inserts the splits made) and
    ``imgov_sink_rows_unwritable_total{table}`` (dead letters not stored even escaped).
    ``imgov_open_studies``, ``imgov_kpi_state_entries{kind}``,
    ``imgov_breaches_open{severity,rule}``.

Gateway (``GatewayMetrics``)
    ``imgov_gateway_messages_total{protocol,outcome}`` (``accepted``, ``rejected``,
    ``retry``), ``imgov_gateway_request_duration_seconds{protocol}``,
    ``imgov_dead_letters_total{stage="gateway",reason}``, ``imgov_output_messages_total``.

Alert bridge (``BridgeMetrics``)
    ``imgov_alerts_breaches_total{state}``, ``imgov_alerts_posts_total{outcome}``,
    ``imgov_alerts_last_post_timestamp_seconds``, and the consumer groups' lag as the
    brokers see it, which outlives a stopped worker:
    ``imgov_group_lag_messages{group,topic,partition}``,
    ``imgov_group_committed_offset``, ``imgov_group_end_offset``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

__all__ = [
    "BATCH_BUCKETS",
    "BridgeMetrics",
    "GatewayMetrics",
    "MetricsServer",
    "WorkerMetrics",
    "new_registry",
    "serve_metrics",
]

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a batch takes milliseconds when idle and seconds under a backlog; a flush
that waits out a ClickHouse outage lands in the top buckets."""

_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _imgov_version() -> str:
    try:
        return version("imgov")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def new_registry(process: str) -> CollectorRegistry:
    """A registry with the process, platform and GC collectors and ``imgov_build_info``."""
    # No ``*_created`` series beside every counter and histogram: they double the
    # scrape for a start time that ``process_start_time_seconds`` already gives.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    info = Gauge(
        "imgov_build_info",
        "Always 1; the labels name the imgov version and the kind of process.",
        ["version", "process"],
        registry=registry,
    )
    info.labels(_imgov_version(), process).set(1)
    return registry


class WorkerMetrics:
    """The metrics of one ``imgov worker`` process (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or new_registry("worker")
        tp = ["topic", "partition"]
        self.input_messages = Counter(
            "imgov_input_messages", "Input messages applied by a stage.", tp, registry=r
        )
        self.committed_offset = Gauge(
            "imgov_consumer_committed_offset",
            "Committed offset of an assigned partition (the next message to read).",
            tp,
            registry=r,
        )
        self.end_offset = Gauge(
            "imgov_consumer_end_offset",
            "End offset (high watermark) of an assigned partition, as last fetched.",
            tp,
            registry=r,
        )
        self.lag = Gauge(
            "imgov_consumer_lag_messages",
            "Messages of an assigned partition not yet committed (end - committed).",
            tp,
            registry=r,
        )
        self.last_commit = Gauge(
            "imgov_consumer_last_commit_timestamp_seconds",
            "Unix time at which the partition's committed offset last moved forward.",
            tp,
            registry=r,
        )
        self.rebalances = Counter(
            "imgov_rebalances", "Consumer group rebalances this worker took part in.", registry=r
        )
        self.watermark_lag = Gauge(
            "imgov_watermark_lag_seconds",
            "Wall clock minus the stage's event-time watermark (absent before one exists).",
            ["stage"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "imgov_batch_duration_seconds",
            "Time to process one batch: outputs computed, flushed, produced and staged.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.outputs = Counter(
            "imgov_output_messages", "Messages produced, by topic.", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "imgov_dead_letters",
            "Dead letters written, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.flush_duration = Histogram(
            "imgov_clickhouse_flush_duration_seconds",
            "Time for one sink flush to ClickHouse to succeed, retries included.",
            ["sink"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rows_written = Counter(
            "imgov_clickhouse_rows_written", "Rows written to ClickHouse.", ["table"], registry=r
        )
        self.last_flush = Gauge(
            "imgov_clickhouse_last_flush_timestamp_seconds",
            "Unix time of the sink's last successful flush.",
            ["sink"],
            registry=r,
        )
        self.clickhouse_errors = Counter(
            "imgov_clickhouse_errors",
            "Failed flush attempts: unavailable (retried, offsets held) or rejected.",
            ["sink", "kind"],
            registry=r,
        )
        self.backpressure = Gauge(
            "imgov_sink_backpressure",
            "1 while the sink cannot write (ClickHouse down): input offsets are held.",
            ["sink"],
            registry=r,
        )
        self.poison_batches = Counter(
            "imgov_sink_poison_batches",
            "Batches ClickHouse refused for some of their values, split to write the rest.",
            ["table"],
            registry=r,
        )
        self.rows_rejected = Counter(
            "imgov_sink_rows_rejected",
            "Rows ClickHouse refused (dead-lettered as SINK_REJECTED).",
            ["table"],
            registry=r,
        )
        self.split_inserts = Counter(
            "imgov_sink_split_inserts",
            "Inserts made to split refused batches (the refused whole included).",
            ["table"],
            registry=r,
        )
        self.rows_unwritable = Counter(
            "imgov_sink_rows_unwritable",
            "Dead letters rejected_events refused even escaped: only in the log.",
            ["table"],
            registry=r,
        )
        self.open_studies = Gauge(
            "imgov_open_studies", "Studies held in the lineage state (open joins).", registry=r
        )
        self.kpi_state = Gauge(
            "imgov_kpi_state_entries",
            "KPI state held: hour_panes, day_panes, emitted_windows, series.",
            ["kind"],
            registry=r,
        )
        self.breaches_open = Gauge(
            "imgov_breaches_open",
            "Governance breaches open in the partitions this worker owns.",
            ["severity", "rule"],
            registry=r,
        )
        self._partitions: set[tuple[str, str]] = set()

    def observe_partitions(
        self,
        rows: Iterable[tuple[str, int, int | None, int | None]],
        last_commit_s: dict[tuple[str, int], float],
    ) -> None:
        """Sets the per-partition gauges to ``(topic, partition, committed, end)`` rows.

        The series of partitions no longer in ``rows`` are removed; the others are set in
        place, never cleared first, so that a scrape in between (another thread) never
        sees them missing.
        """
        gauges = (self.committed_offset, self.end_offset, self.lag, self.last_commit)
        seen: set[tuple[str, str]] = set()
        for topic, partition, committed, end in rows:
            labels = (topic, str(partition))
            seen.add(labels)
            values = (
                committed,
                end,
                None if committed is None or end is None else max(end - committed, 0),
                last_commit_s.get((topic, partition)),
            )
            for gauge, value in zip(gauges, values, strict=True):
                if value is not None:
                    gauge.labels(*labels).set(value)
                else:
                    gauge.remove(*labels)  # a no-op when never set
        for labels in self._partitions - seen:
            for gauge in gauges:
                gauge.remove(*labels)
        self._partitions = seen


class GatewayMetrics:
    """The metrics of one ``imgov gateway`` process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or new_registry("gateway")
        self.messages = Counter(
            "imgov_gateway_messages",
            "Messages received, by protocol and outcome (accepted, rejected, retry).",
            ["protocol", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "imgov_gateway_request_duration_seconds",
            "Time from a message received to its answer (ACK, HTTP response, C-STORE status).",
            ["protocol"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "imgov_dead_letters",
            "Dead letters written, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.outputs = Counter(
            "imgov_output_messages", "Messages produced, by topic.", ["topic"], registry=r
        )


class BridgeMetrics:
    """The metrics of ``imgov alerts`` (breaches to Alertmanager, consumer-group lag)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or new_registry("alerts")
        self.breaches = Counter(
            "imgov_alerts_breaches",
            "Breach messages read, by state (OPEN, RESOLVED).",
            ["state"],
            registry=r,
        )
        self.posts = Counter(
            "imgov_alerts_posts",
            "Posts to Alertmanager, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.last_post = Gauge(
            "imgov_alerts_last_post_timestamp_seconds",
            "Unix time of the last successful post to Alertmanager.",
            registry=r,
        )
        gtp = ["group", "topic", "partition"]
        self.group_lag = Gauge(
            "imgov_group_lag_messages",
            "Messages not committed by a consumer group, from the brokers' offsets.",
            gtp,
            registry=r,
        )
        self.group_committed = Gauge(
            "imgov_group_committed_offset", "A consumer group's committed offset.", gtp, registry=r
        )
        self.group_end = Gauge(
            "imgov_group_end_offset", "A partition's end offset.", gtp, registry=r
        )


class MetricsServer:
    """The HTTP server of a registry (a daemon thread); ``port`` is the bound port."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serves ``registry`` at ``http://host:port/metrics`` (port 0: any free port).

    Raises:
        OSError: the address is taken or cannot be bound.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
