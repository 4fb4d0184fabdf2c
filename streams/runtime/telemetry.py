"""What feeds a worker's Prometheus metrics (``streams.metrics.WorkerMetrics``).

Counters and histograms move where the work happens: the runners report each batch
(``batch_done``), its dead letters and the messages produced; the sink flusher reports
each flush. Gauges of state (offsets, lag, watermarks, state sizes, open breaches) are
sampled on a timer (``sample``) from the event loop, which owns that state: the HTTP
server's thread only reads the metric objects, never the stages. Commits are seen by a
Faust sensor (``CommitSensor``), so the time of the last commit is exact.

No label carries an identifier: topics, partitions, stages, sinks, tables, reasons,
severities and rule ids only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from faust.sensors import Sensor

from schemas.records import DeadLetterReason
from sinks.clickhouse.rows import TABLE_COLUMNS
from streams.metrics import WorkerMetrics

if TYPE_CHECKING:
    from sinks.clickhouse.writer import ClickHouseSink
    from sinks.refusals import TableWrite
    from streams.runtime.agents import KpiRunner, LineageRunner
    from streams.runtime.outputs import InputMessage, OutgoingMessage

__all__ = ["CommitSensor", "WorkerTelemetry"]


class WorkerTelemetry:
    """Reports a worker's work to its metrics.

    Args:
        metrics: the metric objects (one registry per process).
        clock: Unix seconds (for timestamps and watermark lag).
    """

    def __init__(self, metrics: WorkerMetrics, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self._clock = clock
        self._committed: dict[tuple[str, int], int] = {}
        self._last_commit_s: dict[tuple[str, int], float] = {}
        self._rows_counted: dict[tuple[str, str], int] = {}
        # Every (stage, reason) series exists from the start, at 0: ``increase()`` of a
        # series born with its first dead letter misses that first burst.
        for reason in DeadLetterReason:
            late = reason is DeadLetterReason.LATE_AFTER_WINDOW_CLOSED
            refused = reason is DeadLetterReason.SINK_REJECTED
            for stage in ("lineage", "kpi") if refused else ("kpi" if late else "lineage",):
                metrics.dead_letters.labels(stage, reason.value)
        # So do the poison-batch series of every table a sink writes.
        for table in TABLE_COLUMNS:
            metrics.poison_batches.labels(table)
            metrics.rows_rejected.labels(table)
            metrics.split_inserts.labels(table)
            metrics.rows_unwritable.labels(table)

    # -- per batch (event loop) ------------------------------------------------------

    def batch_done(self, stage: str, seconds: float, messages: Sequence[InputMessage]) -> None:
        """A stage finished a batch of ``messages`` in ``seconds``."""
        m = self.metrics
        m.batch_duration.labels(stage).observe(seconds)
        for (topic, partition), n in Counter((x.topic, x.partition) for x in messages).items():
            m.input_messages.labels(topic, str(partition)).inc(n)

    def dead_letters(self, stage: str, reasons: Iterable[str]) -> None:
        for reason, n in Counter(reasons).items():
            self.metrics.dead_letters.labels(stage, reason).inc(n)

    def produced(self, messages: Sequence[OutgoingMessage]) -> None:
        for topic, n in Counter(m.topic for m in messages).items():
            self.metrics.outputs.labels(topic).inc(n)

    # -- sinks -----------------------------------------------------------------------

    def flushed(self, name: str, sink: ClickHouseSink, seconds: float) -> None:
        """A flush of sink ``name`` succeeded after ``seconds`` (retries included)."""
        m = self.metrics
        m.flush_duration.labels(name).observe(seconds)
        m.last_flush.labels(name).set(self._clock())
        m.backpressure.labels(name).set(0)
        for table, total in sink.rows_written_by_table.items():
            counted = self._rows_counted.get((name, table), 0)
            if total > counted:
                m.rows_written.labels(table).inc(total - counted)
                self._rows_counted[(name, table)] = total

    def refused(self, refusals: Iterable[TableWrite]) -> None:
        """Batches ClickHouse refused for some of their values, split by the sink."""
        m = self.metrics
        for refusal in refusals:
            table = refusal.table
            m.poison_batches.labels(table).inc()
            m.rows_rejected.labels(table).inc(refusal.refused)
            m.split_inserts.labels(table).inc(refusal.inserts)
            if refusal.unwritable:
                m.rows_unwritable.labels(table).inc(len(refusal.unwritable))

    def flush_failed(self, name: str, kind: str) -> None:
        """A flush attempt failed: ``unavailable`` (offsets held) or ``rejected``."""
        self.metrics.clickhouse_errors.labels(name, kind).inc()
        self.metrics.backpressure.labels(name).set(1)

    # -- sampled (event loop timer) ----------------------------------------------------

    def commits(self, committed: Mapping[Any, int | None]) -> None:
        """The consumer committed; ``committed`` is its offset per topic-partition."""
        now = self._clock()
        for tp, offset in committed.items():
            if offset is None:
                continue
            key = (tp[0], tp[1])
            if self._committed.get(key) != offset:
                self._committed[key] = offset
                self._last_commit_s[key] = now

    def sample(
        self,
        partitions: Iterable[tuple[str, int, int | None, int | None]],
        lineage: LineageRunner | None,
        kpi: KpiRunner | None,
    ) -> None:
        """Sets the gauges: ``(topic, partition, committed, end)`` of the assigned
        partitions, and the state of the stages this worker runs."""
        m = self.metrics
        m.observe_partitions(partitions, self._last_commit_s)
        now_ms = self._clock() * 1000
        if lineage is not None:
            self._watermark("lineage", lineage.lineage.watermark_ms, now_ms)
            m.open_studies.set(lineage.lineage.joiner.studies_held)
        if kpi is not None:
            marks = [w for w in kpi.kpi.watermarks().values() if w is not None]
            self._watermark("kpi", min(marks) if marks else None, now_ms)
            for kind, n in kpi.kpi.state_size().items():
                m.kpi_state.labels(kind).set(n)
            open_now = kpi.kpi.open_breaches()
            for severity, rule in _label_sets(m.breaches_open) - set(open_now):
                m.breaches_open.labels(severity, rule).set(0)
            for (severity, rule), n in open_now.items():
                m.breaches_open.labels(severity, rule).set(n)

    def _watermark(self, stage: str, watermark_ms: int | None, now_ms: float) -> None:
        if watermark_ms is None:
            self.metrics.watermark_lag.remove(stage)  # none yet: no series, not a zero
        else:
            self.metrics.watermark_lag.labels(stage).set(max(now_ms - watermark_ms, 0) / 1000)


def _label_sets(metric: Any) -> set[tuple[str, str]]:
    """The label values a labelled metric has series for."""
    return {
        (sample.labels["severity"], sample.labels["rule"])
        for family in metric.collect()
        for sample in family.samples
    }


class CommitSensor(Sensor):  # type: ignore[misc]
    """A Faust sensor: commits (their time) and rebalances reach the telemetry."""

    def __init__(self, telemetry: WorkerTelemetry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._telemetry = telemetry

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self._telemetry.commits(dict(getattr(consumer, "_committed_offset", {})))

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self._telemetry.metrics.rebalances.inc()
        return {}
