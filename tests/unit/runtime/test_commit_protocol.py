"""The agents' commit protocol, against an in-memory fake of the worker's Kafka seam.

``streams.runtime.agents`` promises, per batch: flush the sink, produce the outputs (and
wait for the broker), write the state (local store, then changelog, and wait), and only
then acknowledge the input offsets. A crash at any step before the acknowledgement must
leave every offset of the batch unacknowledged, so that Kafka delivers it again. These
tests run the real runners and stages; only Kafka (``WorkerIO``), ClickHouse (the sink
behind ``SinkFlusher``) and the state store are in-memory fakes that write a journal.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.corpus import sample_events
from schemas.registry import registry_from_environ
from streams.core.kpi.aggregator import KpiAggregator
from streams.governance import build_pseudonymiser, lineage_config, load_settings
from streams.runtime.agents import (
    KpiRunner,
    LineageRunner,
    SinkFlusher,
    WorkerIO,
    input_messages,
)
from streams.runtime.outputs import OutgoingMessage, OutputEncoder
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping, StagedWrite
from streams.runtime.stages import KpiStage, LineageStage
from streams.topics import WorkerTopics

NOW_MS = 1_760_000_000_000
TOPICS = WorkerTopics.with_namespace("t.")
PARTITIONS = 3


class Crash(Exception):
    """A process dying at one step (never caught by the runners' retry loops)."""


@dataclass
class Journal:
    """Every step the fakes saw, in order.

    ``crash_at = (step, after)`` makes the first ``step`` that comes after a step named
    ``after`` (or the very first ``step`` when ``after`` is None) raise ``Crash``.
    """

    steps: list[str] = field(default_factory=list)
    crash_at: tuple[str, str | None] | None = None

    def record(self, step: str) -> None:
        if self.crash_at is not None:
            target, after = self.crash_at
            if step == target and (after is None or after in self.steps):
                self.crash_at = None
                raise Crash(f"crash at {step} (after {after})")
        self.steps.append(step)

    def phases(self) -> list[str]:
        """The steps with repeats collapsed: the protocol's shape."""
        return [step for step, _ in itertools.groupby(self.steps)]


class JournalSink:
    """The ClickHouse sink's surface the runners use."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.rows_written = 0
        self.rows_written_by_table: dict[str, int] = {}
        self.refusals: list[Any] = []
        """Refused batches (``sinks.refusals.TableWrite``) the next flush reports."""

    def add(self, record: Any) -> None:
        self._journal.record("sink.add")

    def take_refusals(self) -> list[Any]:
        taken, self.refusals = self.refusals, []
        return taken

    def add_event(self, event: Any, source: Any) -> None:
        self._journal.record("sink.add")

    def flush(self) -> None:
        self._journal.record("sink.flush")


class JournalStore(DictPartitionedStore):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self._journal = journal

    def write(self, writes: list[StagedWrite]) -> None:
        self._journal.record("state.write")
        super().write(writes)


def fake_kafka(journal: Journal, assignment: frozenset[tuple[str, int]]) -> WorkerIO:
    """The worker's Kafka seam in memory: produced messages are journaled, never sent."""

    async def send(message: OutgoingMessage) -> asyncio.Future[None]:
        journal.record("produce")
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    async def flush() -> None:
        journal.record("producer.flush")

    codec = Codec(registry_from_environ({}))
    return WorkerIO(
        send=send,
        flush=flush,
        assignment=lambda: assignment,
        encoder=OutputEncoder(codec, TOPICS),
    )


def faust_events(messages: list[tuple[str, int, int, bytes | None, bytes]]) -> list[Any]:
    """Objects shaped like Faust events (``event.message``) for raw-bytes agents."""
    return [
        SimpleNamespace(
            message=SimpleNamespace(
                topic=topic,
                partition=partition,
                offset=offset,
                key=key,
                value=value,
                headers=[],
                timestamp=None,
            )
        )
        for topic, partition, offset, key, value in messages
    ]


def _ack(journal: Journal, acked: list[Any]) -> Callable[[Any], Any]:
    async def ack(event: Any) -> None:
        journal.record("ack")
        acked.append(event)

    return ack


def _input_batch(codec: Codec) -> list[Any]:
    events = sample_events(40, seed=11, end_ms=NOW_MS)
    return faust_events(
        [
            (TOPICS.inference, zlib.crc32(key) % PARTITIONS, offset, key, codec.encode(e))
            for offset, e in enumerate(events)
            for key in [e.study_uid.encode()]
        ]
    )


def _lineage_runner(
    journal: Journal, owned: int = PARTITIONS
) -> tuple[LineageRunner, JournalStore]:
    settings = load_settings(demo=True)
    store = JournalStore(journal)
    stage = LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        Codec(registry_from_environ({})),
        StagedMapping(store),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
        input_topics=TOPICS.inputs,
    )
    assignment = frozenset((t, p) for t in TOPICS.inputs for p in range(owned))
    runner = LineageRunner(
        io=fake_kafka(journal, assignment),
        stage=stage,
        store=store,
        sink=SinkFlusher(JournalSink(journal), "test"),  # type: ignore[arg-type]
        input_topics=TOPICS.inputs,
        contributions_partitions=PARTITIONS,
    )
    return runner, store


async def test_a_lineage_batch_flushes_produces_writes_state_then_acknowledges() -> None:
    journal = Journal()
    runner, store = _lineage_runner(journal)
    batch = _input_batch(Codec(registry_from_environ({})))
    acked: list[Any] = []
    await runner.lineage_batch(batch, _ack(journal, acked))
    first_ack = journal.phases().index("ack")
    assert journal.phases()[: first_ack + 1] == [
        "sink.add",
        "sink.flush",  # 2. the rows are in ClickHouse
        "produce",
        "producer.flush",  # 3. the broker has the output messages
        "state.write",
        "producer.flush",  # 4. the state is in the local store and its changelog
        "ack",  # 5. only now the offsets
    ]
    assert acked == batch and store.data


async def test_input_of_partitions_handed_over_is_left_to_their_owner() -> None:
    journal = Journal()
    runner, store = _lineage_runner(journal, owned=0)  # a rebalance took every partition
    acked: list[Any] = []
    await runner.lineage_batch(_input_batch(Codec(registry_from_environ({}))), _ack(journal, acked))
    assert acked == [] and not journal.steps and not store.data


CRASHES = [
    ("sink.flush", None),
    ("produce", None),
    ("producer.flush", None),
    ("state.write", None),
    ("producer.flush", "state.write"),
]


def _crash_id(crash: tuple[str, str | None]) -> str:
    return crash[0] if crash[1] is None else f"{crash[0]}-after-{crash[1]}"


@pytest.mark.parametrize("crash_at", CRASHES, ids=_crash_id)
async def test_a_crash_before_the_acknowledgement_leaves_the_lineage_batch_unacknowledged(
    crash_at: tuple[str, str | None],
) -> None:
    journal = Journal(crash_at=crash_at)
    runner, _ = _lineage_runner(journal)
    acked: list[Any] = []
    with pytest.raises(Crash):
        await runner.lineage_batch(
            _input_batch(Codec(registry_from_environ({}))), _ack(journal, acked)
        )
    assert acked == [] and "ack" not in journal.steps


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _contributions(codec: Codec, partition: int = 0) -> list[Any]:
    """A batch of contributions as the lineage stage writes them (one partition)."""
    settings = load_settings(demo=True)
    stage = LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        codec,
        StagedMapping(DictPartitionedStore()),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
    )
    records = stage.process(input_messages(_input_batch(codec))).lineage
    assert records
    return faust_events(
        [
            (TOPICS.contributions, partition, offset, None, codec.encode(record))
            for offset, record in enumerate(records)
        ]
    )


def _kpi_runner(
    journal: Journal, clock: Clock, max_contributions: int = 2_000
) -> tuple[KpiRunner, JournalStore]:
    settings = load_settings(demo=True)
    codec = Codec(registry_from_environ({}))
    store = JournalStore(journal)
    stage = KpiStage(
        codec,
        StagedMapping(store),
        StagedMapping(store),
        lambda: KpiAggregator(settings.kpi),
        lambda: None,
        upstream_partitions=PARTITIONS,
    )
    runner = KpiRunner(
        io=fake_kafka(journal, frozenset({(TOPICS.contributions, 0)})),
        stage=stage,
        store=store,
        sink=SinkFlusher(JournalSink(journal), "test"),  # type: ignore[arg-type]
        current_interval_s=3_600.0,
        checkpoint_interval_s=5.0,
        checkpoint_max_contributions=max_contributions,
        clock=clock,
    )
    return runner, store


async def test_enough_contributions_waiting_take_a_checkpoint_before_its_time() -> None:
    """A snapshot carries the rows staged since the last one: the count bounds its size
    (a backlog's snapshot once outgrew the producer's request size)."""
    journal, clock = Journal(), Clock()
    batch = _contributions(Codec(registry_from_environ({})))
    runner, _ = _kpi_runner(journal, clock, max_contributions=len(batch))
    first: list[Any] = []
    await runner.kpi_batch(batch[:-1], _ack(journal, first))
    assert first == [] and "state.write" not in journal.steps
    await runner.kpi_batch(batch[-1:], _ack(journal, first))
    assert "state.write" in journal.steps and first == batch  # no time passed


async def test_kpi_batches_are_acknowledged_only_at_the_checkpoint_after_the_state() -> None:
    journal, clock = Journal(), Clock()
    runner, store = _kpi_runner(journal, clock)
    batch = _contributions(Codec(registry_from_environ({})))
    acked: list[Any] = []
    await runner.kpi_batch(batch, _ack(journal, acked))
    # Steps 1-3 per batch: every window is still open (no watermark yet), so nothing is
    # flushed or produced; the state waits for the checkpoint and the batch is held.
    assert "state.write" not in journal.steps and acked == []
    assert runner.kpi_unacknowledged == len(batch)
    clock.now += 5.0
    await runner.kpi_tick()
    assert journal.phases()[-3:] == ["state.write", "producer.flush", "ack"]
    assert acked == batch and runner.kpi_unacknowledged == 0 and store.data


async def test_kpi_contributions_of_a_partition_handed_over_are_left_to_its_owner() -> None:
    """Delivered after the rebalance that took their partition away (fetched before it),
    they are neither applied, snapshotted nor acknowledged."""
    journal, clock = Journal(), Clock()
    runner, store = _kpi_runner(journal, clock)  # assigned: contributions partition 0
    codec = Codec(registry_from_environ({}))
    acked: list[Any] = []
    await runner.kpi_batch(_contributions(codec, partition=1), _ack(journal, acked))
    assert runner.kpi_unacknowledged == 0 and runner.kpi.watermarks() == {}
    mine = _contributions(codec)
    await runner.kpi_batch(mine, _ack(journal, acked))
    clock.now += 5.0
    await runner.kpi_tick()
    assert acked == mine
    assert [key for key in store.data if b"snapshot:" in key] == [b"\x00snapshot:0"]


async def test_kpi_contributions_before_the_seek_that_ends_a_rebalance_are_read_again() -> None:
    """Assigned, but not yet sought to its committed offset: what the partition delivers
    was fetched before the rebalance and is neither applied nor acknowledged."""
    journal, clock = Journal(), Clock()
    runner, _ = _kpi_runner(journal, clock)
    unsettled = {(TOPICS.contributions, 0)}
    runner._io = replace(runner._io, unsettled=lambda: frozenset(unsettled))
    codec = Codec(registry_from_environ({}))
    acked: list[Any] = []
    await runner.kpi_batch(_contributions(codec), _ack(journal, acked))
    assert runner.kpi_unacknowledged == 0 and runner.kpi.watermarks() == {}
    unsettled.clear()  # perform_seek
    await runner.kpi_batch(_contributions(codec), _ack(journal, acked))
    assert runner.kpi_unacknowledged > 0


async def test_kpi_batches_held_when_the_assignment_changed_are_dropped_not_checkpointed() -> None:
    """The rebalance completed before the checkpoint that was to hand the state over:
    writing it now could land after the new owner's own state in the changelog."""
    journal, clock = Journal(), Clock()
    runner, store = _kpi_runner(journal, clock)
    acked: list[Any] = []
    await runner.kpi_batch(_contributions(Codec(registry_from_environ({}))), _ack(journal, acked))
    assert runner.kpi_unacknowledged > 0
    runner._io = replace(runner._io, assignment=lambda: frozenset())
    runner._rebalancing = lambda: True
    await runner.kpi_tick()
    assert runner.kpi_unacknowledged == 0 and acked == []
    assert "state.write" not in journal.steps and not store.data


async def test_kpi_values_are_flushed_and_produced_before_the_checkpoint() -> None:
    journal, clock = Journal(), Clock()
    runner, _ = _kpi_runner(journal, clock)
    runner._current_interval_s = 0.0  # publish current values after the batch
    acked: list[Any] = []
    await runner.kpi_batch(_contributions(Codec(registry_from_environ({}))), _ack(journal, acked))
    clock.now += 5.0
    await runner.kpi_tick()
    phases = journal.phases()
    assert phases.index("sink.flush") < phases.index("produce") < phases.index("state.write")
    assert phases[-1] == "ack" and "ack" not in phases[:-1]


@pytest.mark.parametrize("crash_at", CRASHES, ids=_crash_id)
async def test_a_crash_before_the_checkpoint_ends_leaves_kpi_input_unacknowledged(
    crash_at: tuple[str, str | None],
) -> None:
    journal, clock = Journal(crash_at=crash_at), Clock()
    runner, _ = _kpi_runner(journal, clock)
    runner._current_interval_s = 0.0
    acked: list[Any] = []
    with pytest.raises(Crash):
        await runner.kpi_batch(
            _contributions(Codec(registry_from_environ({}))), _ack(journal, acked)
        )
        clock.now += 5.0
        await runner.kpi_tick()
    assert acked == [] and "ack" not in journal.steps
