"""The lineage runner's audit checkpoints: between batches, per owned partition, of the
heads the batches wrote; stored (heads, then checkpoint) and produced to the compacted
topic; at stop too; a failure never stops the pipeline.

ClickHouse is an in-memory fake of the ``QueryBackend`` surface the anchor uses; the
runner, stage, store and encoder are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.codec import Codec
from schemas.records import AuditCheckpoint, ChainHead, LineageRecord
from schemas.registry import registry_from_environ
from sinks.clickhouse.checkpoints import (
    CHECKPOINT_COLUMNS,
    CHECKPOINTS_TABLE,
    HEADS_TABLE,
    checkpoint_from_row,
)
from streams.core.lineage.anchor import CheckpointKey, CheckpointKeyring, verify_checkpoint
from streams.governance import build_pseudonymiser, lineage_config, load_settings
from streams.runtime.agents import LineageRunner, SinkFlusher, WorkerIO
from streams.runtime.anchor import CheckpointAnchor, heads_by_partition
from streams.runtime.outputs import OutgoingMessage, OutputEncoder
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping
from streams.runtime.stages import LineageStage
from tests.unit.runtime.test_commit_protocol import (
    NOW_MS,
    PARTITIONS,
    TOPICS,
    Journal,
    JournalSink,
    _input_batch,
)

RING = CheckpointKeyring(CheckpointKey(b"c" * 32))


class MemoryBackend:
    """What the anchor asks of ClickHouse: inserts, and the last sequence stored."""

    def __init__(self, fail: bool = False) -> None:
        self.tables: dict[str, list[tuple[object, ...]]] = {CHECKPOINTS_TABLE: [], HEADS_TABLE: []}
        self.order: list[str] = []
        self.fail = fail

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if self.fail:
            raise OSError("ClickHouse is down")
        self.order.append(table)
        self.tables[table].extend(tuple(r) for r in rows)

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> Any:
        assert params is not None and "max(sequence)" in sql
        sequences = [int(r[1]) for r in self.tables[CHECKPOINTS_TABLE] if r[0] == params["p"]]  # type: ignore[call-overload]
        return ["max(sequence)"], [[max(sequences, default=0)]]

    def close(self) -> None:
        pass

    def checkpoints(self) -> list[AuditCheckpoint]:
        return [checkpoint_from_row(r) for r in self.tables[CHECKPOINTS_TABLE]]

    def heads(self, checkpoint: AuditCheckpoint) -> list[ChainHead]:
        return [
            ChainHead(*r[2:8])  # type: ignore[arg-type]
            for r in self.tables[HEADS_TABLE]
            if r[0] == checkpoint.partition and r[1] == checkpoint.sequence
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def runner_with_anchor(
    backend: MemoryBackend, clock: Clock
) -> tuple[LineageRunner, list[OutgoingMessage], Codec]:
    settings = load_settings(demo=True)
    codec = Codec(registry_from_environ({}))
    store = DictPartitionedStore()
    produced: list[OutgoingMessage] = []

    async def send(message: OutgoingMessage) -> asyncio.Future[None]:
        produced.append(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush() -> None:
        pass

    assignment = frozenset((t, p) for t in TOPICS.inputs for p in range(PARTITIONS))
    io = WorkerIO(
        send=send,
        flush=flush,
        assignment=lambda: assignment,
        encoder=OutputEncoder(codec, TOPICS),
    )
    stage = LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        codec,
        StagedMapping(store),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
        input_topics=TOPICS.inputs,
    )
    anchor = CheckpointAnchor(
        keyring=RING,
        connect=lambda: backend,  # type: ignore[arg-type,return-value]
        interval_s=60.0,
        wall_clock_ms=lambda: NOW_MS,
        clock=clock,
    )
    runner = LineageRunner(
        io=io,
        stage=stage,
        store=store,
        sink=SinkFlusher(JournalSink(Journal()), "test"),  # type: ignore[arg-type]
        input_topics=TOPICS.inputs,
        contributions_partitions=PARTITIONS,
        anchor=anchor,
    )
    return runner, produced, codec


async def _ack(event: Any) -> None:
    pass


def newest_revisions(records: list[LineageRecord]) -> set[ChainHead]:
    newest: dict[tuple[str, str, str, str], LineageRecord] = {}
    for r in records:
        key = (r.site_id, r.study_uid, r.algorithm_name, r.finding_code)
        if key not in newest or r.revision > newest[key].revision:
            newest[key] = r
    return {ChainHead(*k, r.revision, r.record_hash) for k, r in newest.items()}


async def test_checkpoints_hold_every_head_written_and_are_stored_then_produced() -> None:
    backend, clock = MemoryBackend(), Clock()
    runner, produced, codec = runner_with_anchor(backend, clock)
    await runner.lineage_batch(_input_batch(codec), _ack)
    lineage = [codec.decode(m.value, LineageRecord) for m in produced if m.topic == TOPICS.lineage]
    produced.clear()

    await runner.audit_tick()  # not due yet
    assert backend.order == [] and produced == []

    clock.now += 60
    await runner.audit_tick()
    checkpoints = backend.checkpoints()
    assert [(c.partition, c.sequence) for c in checkpoints] == [(p, 1) for p in range(PARTITIONS)]
    # Heads are stored before the checkpoint row that vouches for them.
    assert backend.order.index(CHECKPOINTS_TABLE) > backend.order.index(HEADS_TABLE)
    heads = [h for c in checkpoints for h in backend.heads(c)]
    assert set(heads) == newest_revisions(lineage) and len(heads) == len(set(heads))
    for c in checkpoints:
        assert verify_checkpoint(c, backend.heads(c), RING) == []
    # The compacted topic gets each checkpoint (without heads), keyed by partition.
    assert [m.topic for m in produced] == [TOPICS.audit_checkpoint] * PARTITIONS
    assert [m.key for m in produced] == [str(p).encode() for p in range(PARTITIONS)]
    assert [codec.decode(m.value, AuditCheckpoint) for m in produced] == checkpoints

    clock.now += 60
    await runner.audit_tick()
    assert [c.sequence for c in backend.checkpoints()][-PARTITIONS:] == [2] * PARTITIONS


async def test_a_last_checkpoint_is_written_at_stop() -> None:
    backend, clock = MemoryBackend(), Clock()
    runner, produced, codec = runner_with_anchor(backend, clock)
    await runner.lineage_batch(_input_batch(codec), _ack)
    await runner.stop()
    assert len(backend.checkpoints()) == PARTITIONS
    assert sum(c.head_count for c in backend.checkpoints()) > 0
    assert len([m for m in produced if m.topic == TOPICS.audit_checkpoint]) == PARTITIONS


async def test_a_failed_checkpoint_is_skipped_and_processing_goes_on() -> None:
    backend, clock = MemoryBackend(fail=True), Clock()
    runner, produced, codec = runner_with_anchor(backend, clock)
    clock.now += 60
    await runner.audit_tick()  # ClickHouse down: logged, nothing produced
    assert not [m for m in produced if m.topic == TOPICS.audit_checkpoint]
    acked: list[Any] = []

    async def ack(event: Any) -> None:
        acked.append(event)

    batch = _input_batch(codec)
    await runner.lineage_batch(batch, ack)
    assert acked == batch


def test_heads_by_partition_skips_other_keys_and_partitions() -> None:
    store = DictPartitionedStore()
    staged = StagedMapping(store)
    staged.use_partition(1)
    staged["\x00applied:t:1"] = b"not a study"
    staged.commit()
    assert heads_by_partition(store.items(), [0, 1]) == {0: [], 1: []}
    assert CHECKPOINT_COLUMNS[0] == "input_partition"
