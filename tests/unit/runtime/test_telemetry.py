"""A worker's metrics, fed by the real runners and stages (Kafka and ClickHouse faked)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.corpus import sample_events
from schemas.registry import registry_from_environ
from sinks.base import SinkBackpressureError
from streams.metrics import WorkerMetrics
from streams.runtime.agents import SinkFlusher
from streams.runtime.telemetry import WorkerTelemetry
from tests.unit.runtime.test_commit_protocol import (
    NOW_MS,
    TOPICS,
    Journal,
    JournalSink,
    _ack,
    _input_batch,
    _lineage_runner,
)


def _sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _label_values(metrics: WorkerMetrics) -> set[str]:
    return {
        value
        for family in metrics.registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    }


async def test_a_lineage_batch_reports_input_outputs_flush_duration_and_state() -> None:
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics, clock=lambda: NOW_MS / 1000)
    runner, _ = _lineage_runner(Journal())
    runner._io = replace(runner._io, telemetry=telemetry)
    runner._lineage_sink = SinkFlusher(JournalSink(Journal()), "lineage", telemetry)  # type: ignore[arg-type]
    batch = _input_batch(Codec(registry_from_environ({})))
    await runner.lineage_batch(batch, _ack(Journal(), []))

    by_partition: dict[str, int] = {}
    for event in batch:
        key = str(event.message.partition)
        by_partition[key] = by_partition.get(key, 0) + 1
    for partition, n in by_partition.items():
        assert (
            _sample(
                metrics, "imgov_input_messages_total", topic=TOPICS.inference, partition=partition
            )
            == n
        )
    lineage_out = _sample(metrics, "imgov_output_messages_total", topic=TOPICS.lineage)
    contributions = _sample(metrics, "imgov_output_messages_total", topic=TOPICS.contributions)
    assert lineage_out and lineage_out == contributions  # one contribution per lineage row
    assert _sample(metrics, "imgov_batch_duration_seconds_count", stage="lineage") == 1
    assert _sample(metrics, "imgov_clickhouse_flush_duration_seconds_count", sink="lineage") == 1
    assert _sample(metrics, "imgov_clickhouse_last_flush_timestamp_seconds", sink="lineage") == (
        NOW_MS / 1000
    )
    assert _sample(metrics, "imgov_sink_backpressure", sink="lineage") == 0

    telemetry.sample([], runner, None)
    assert (_sample(metrics, "imgov_open_studies") or 0) > 0
    assert _sample(metrics, "imgov_watermark_lag_seconds", stage="lineage") is None
    for partition in range(3):  # the alert and report sources sent nothing: idle
        runner.lineage.mark_idle(TOPICS.alert, partition)
        runner.lineage.mark_idle(TOPICS.report, partition)
    telemetry.sample([], runner, None)
    watermark = runner.lineage.watermark_ms
    assert watermark is not None
    assert _sample(metrics, "imgov_watermark_lag_seconds", stage="lineage") == pytest.approx(
        (NOW_MS - watermark) / 1000
    )


async def test_no_label_value_is_an_identifier_of_the_input() -> None:
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics)
    runner, _ = _lineage_runner(Journal())
    runner._io = replace(runner._io, telemetry=telemetry)
    runner._lineage_sink = SinkFlusher(JournalSink(Journal()), "lineage", telemetry)  # type: ignore[arg-type]
    await runner.lineage_batch(_input_batch(Codec(registry_from_environ({}))), _ack(Journal(), []))
    telemetry.sample([(TOPICS.inference, 0, 5, 9)], runner, None)

    identifiers: set[str] = set()
    for event in sample_events(40, seed=11, end_ms=NOW_MS):
        for value in event.model_dump().values():
            if isinstance(value, str) and len(value) > 3:
                identifiers.add(value)
    labels = _label_values(metrics)
    assert TOPICS.inference in labels  # the check sees the labels at all
    assert not labels & identifiers


class _FlakySink(JournalSink):
    """ClickHouse down for the first ``outage`` flushes."""

    def __init__(self, outage: int) -> None:
        super().__init__(Journal())
        self.outage = outage
        self.rows_written_by_table = {"kpi_values": 7}

    def flush(self) -> None:
        if self.outage:
            self.outage -= 1
            raise SinkBackpressureError("unreachable", retry_after_s=0.0)


async def test_backpressure_is_one_while_clickhouse_is_down_and_zero_after() -> None:
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics)
    states: list[float | None] = []
    original = telemetry.flush_failed

    def failed(name: str, kind: str) -> None:
        original(name, kind)
        states.append(_sample(metrics, "imgov_sink_backpressure", sink="kpi"))

    telemetry.flush_failed = failed  # type: ignore[method-assign]
    flusher = SinkFlusher(_FlakySink(outage=2), "kpi", telemetry)  # type: ignore[arg-type]
    await flusher.flush()
    assert states == [1.0, 1.0]
    assert _sample(metrics, "imgov_sink_backpressure", sink="kpi") == 0
    assert _sample(metrics, "imgov_clickhouse_errors_total", sink="kpi", kind="unavailable") == 2
    assert _sample(metrics, "imgov_clickhouse_rows_written_total", table="kpi_values") == 7
    await flusher.flush()  # nothing new written: the counter does not count twice
    assert _sample(metrics, "imgov_clickhouse_rows_written_total", table="kpi_values") == 7


def test_partition_gauges_follow_the_assignment_and_commit_times_the_offsets() -> None:
    now = [100.0]
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics, clock=lambda: now[0])
    telemetry.commits({("t", 0): 5, ("t", 1): None})
    now[0] = 160.0
    telemetry.commits({("t", 0): 5})  # a commit that moved nothing
    telemetry.sample([("t", 0, 5, 12), ("t", 1, None, 3)], None, None)
    assert _sample(metrics, "imgov_consumer_lag_messages", topic="t", partition="0") == 7
    assert _sample(metrics, "imgov_consumer_end_offset", topic="t", partition="1") == 3
    assert _sample(metrics, "imgov_consumer_lag_messages", topic="t", partition="1") is None
    last = "imgov_consumer_last_commit_timestamp_seconds"
    assert _sample(metrics, last, topic="t", partition="0") == 100.0
    telemetry.commits({("t", 0): 9})
    telemetry.sample([("t", 0, 9, 12)], None, None)  # partition 1 handed over
    assert _sample(metrics, last, topic="t", partition="0") == 160.0
    assert _sample(metrics, "imgov_consumer_end_offset", topic="t", partition="1") is None


def test_open_breaches_drop_to_zero_when_they_resolve() -> None:
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics)
    open_now: dict[tuple[str, str], int] = {("CRITICAL", "ppv-floor"): 2}
    kpi: Any = type(
        "Kpi",
        (),
        {
            "kpi": type(
                "Stage",
                (),
                {
                    "watermarks": lambda self: {0: None},
                    "state_size": lambda self: {"series": 3},
                    "open_breaches": lambda self: dict(open_now),
                },
            )()
        },
    )()
    telemetry.sample([], None, kpi)
    gauge = "imgov_breaches_open"
    assert _sample(metrics, gauge, severity="CRITICAL", rule="ppv-floor") == 2
    assert _sample(metrics, "imgov_kpi_state_entries", kind="series") == 3
    assert _sample(metrics, "imgov_watermark_lag_seconds", stage="kpi") is None
    open_now.clear()
    telemetry.sample([], None, kpi)
    assert _sample(metrics, gauge, severity="CRITICAL", rule="ppv-floor") == 0


def test_dead_letter_and_poison_batch_series_exist_at_zero_from_the_start() -> None:
    """``increase()`` misses the first burst of a series born with it (and the live
    operations test checks every family of the catalogue is served)."""
    metrics = WorkerMetrics()
    WorkerTelemetry(metrics)
    for table in ("event_log", "lineage_history", "kpi_values", "rejected_events"):
        for name in (
            "imgov_sink_poison_batches_total",
            "imgov_sink_rows_rejected_total",
            "imgov_sink_split_inserts_total",
            "imgov_sink_rows_unwritable_total",
        ):
            assert _sample(metrics, name, table=table) == 0.0
    reason = "SINK_REJECTED"
    for stage in ("lineage", "kpi"):
        assert _sample(metrics, "imgov_dead_letters_total", stage=stage, reason=reason) == 0.0
