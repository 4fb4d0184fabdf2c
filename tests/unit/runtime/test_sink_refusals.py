"""The runners with a sink that refused rows: the dead letters reach the dead-letter topic
before the batch is acknowledged, and the metrics count the poison batch."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from schemas.codec import Codec
from schemas.records import DeadLetter, DeadLetterReason, LineageRecord
from schemas.registry import registry_from_environ
from sinks.clickhouse.rows import lineage_row
from sinks.refusals import TableWrite, refused_letter
from streams.metrics import WorkerMetrics
from streams.runtime.agents import SinkFlusher
from streams.runtime.outputs import OutgoingMessage
from streams.runtime.telemetry import WorkerTelemetry
from tests.unit.runtime.test_commit_protocol import (
    TOPICS,
    Journal,
    JournalSink,
    _ack,
    _input_batch,
    _lineage_runner,
)
from tests.unit.sinks import factory

RECORD = next(r for r in factory.every_kind() if isinstance(r, LineageRecord))


class RefusingSink(JournalSink):
    """Reports one poison batch of lineage_history at its first flush."""

    def flush(self) -> None:
        super().flush()
        if not self.refusals:
            letter = refused_letter("lineage_history", lineage_row(RECORD), "boom", 5)
            self.refusals = [TableWrite("lineage_history", 10, 9, 6, "boom", 1, letters=[letter])]


async def test_refused_rows_are_produced_as_dead_letters_before_the_ack() -> None:
    journal = Journal()
    metrics = WorkerMetrics()
    telemetry = WorkerTelemetry(metrics)
    runner, _ = _lineage_runner(journal)
    produced: list[OutgoingMessage] = []
    send = runner._io.send

    async def capture(message: OutgoingMessage) -> Any:
        produced.append(message)
        return await send(message)

    runner._io = replace(runner._io, send=capture, telemetry=telemetry)
    runner._lineage_sink = SinkFlusher(RefusingSink(journal), "lineage", telemetry)  # type: ignore[arg-type]
    codec = Codec(registry_from_environ({}))
    await runner.lineage_batch(_input_batch(codec), _ack(journal, []))

    dlq = [m for m in produced if m.topic == TOPICS.dlq]
    (message,) = dlq
    letter = codec.decode(message.value, DeadLetter)
    assert isinstance(letter, DeadLetter)
    assert letter.reason is DeadLetterReason.SINK_REJECTED
    key = (RECORD.site_id, RECORD.study_uid, RECORD.algorithm_name, RECORD.finding_code)
    assert message.key == "|".join((*key, str(RECORD.revision))).encode()
    phases = journal.phases()
    assert phases.index("sink.flush") < phases.index("produce") < phases.index("ack")

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("imgov_sink_poison_batches_total", table="lineage_history") == 1
    assert sample("imgov_sink_rows_rejected_total", table="lineage_history") == 1
    assert sample("imgov_sink_split_inserts_total", table="lineage_history") == 6
    assert sample("imgov_dead_letters_total", stage="lineage", reason="SINK_REJECTED") == 1
    assert sample("imgov_dead_letters_total", stage="kpi", reason="SINK_REJECTED") == 0
