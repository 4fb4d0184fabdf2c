"""The live worker's stages and staged state, without a broker (memory stores)."""

from __future__ import annotations

import random

import pytest

from schemas.codec import Codec
from schemas.corpus import sample_events
from schemas.records import KpiValue, LineageRecord
from schemas.registry import registry_from_environ
from streams.core.aggregator import KpiAggregator
from streams.core.pipeline import GovernanceProcessor
from streams.runtime.governance import build_pseudonymiser, lineage_config, load_settings
from streams.runtime.outputs import InputMessage, OutputEncoder, lineage_key
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping
from streams.runtime.stages import KpiStage, LineageStage
from streams.runtime.worker_config import WorkerTopics

NOW_MS = 1_760_000_000_000
TOPICS = WorkerTopics.with_namespace("t.")


def _codec() -> Codec:
    return Codec(registry_from_environ({}))


def _messages(events: list, codec: Codec, partitions: int = 3) -> list[InputMessage]:
    out = []
    for offset, e in enumerate(events):
        p = hash(e.study_uid) % partitions
        out.append(InputMessage(TOPICS.inference, p, offset, e.study_uid.encode(), codec.encode(e)))
    return out


def _lineage_stage(store: DictPartitionedStore) -> LineageStage:
    settings = load_settings(demo=True)
    return LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        _codec(),
        StagedMapping(store),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
    )


def test_staged_mapping_writes_nothing_until_commit() -> None:
    store = DictPartitionedStore()
    mapping = StagedMapping(store)
    mapping.use_partition(2)
    mapping["a"] = b"x"
    assert mapping["a"] == b"x" and store.data == {}
    assert mapping.commit() == 1
    assert store.data == {b"a": b"\x00\x02x"}
    mapping.use_partition(None)
    mapping["a"] = b"y"  # an existing key keeps its partition
    del mapping["a"]
    mapping.commit()
    assert store.log[-1] == (2, b"a", None)
    with pytest.raises(RuntimeError):
        mapping["new"] = b"z"


def test_redelivered_batch_after_lost_state_gives_the_same_final_lineage() -> None:
    codec = _codec()
    events = sample_events(150, seed=3, end_ms=NOW_MS)
    messages = _messages(events, codec)
    store = DictPartitionedStore()
    stage = _lineage_stage(store)
    first = stage.process(messages[:80])
    stage.state.commit()
    crashed = stage.process(messages[80:])  # outputs flushed, then kill -9: state lost
    assert crashed.lineage
    restarted = _lineage_stage(store)
    restarted.rebuild()
    again = restarted.process(messages[80:] + messages[:10])  # redelivery + duplicates
    restarted.state.commit()
    latest = {lineage_key(r): r for r in first.lineage + again.lineage}
    crashed_latest = {lineage_key(r): r for r in first.lineage + crashed.lineage}
    assert {k: r.record_hash for k, r in latest.items()} == {
        k: r.record_hash for k, r in crashed_latest.items()
    }


def _kpi_stage(store: DictPartitionedStore, *, on_demand: bool = False) -> KpiStage:
    settings = load_settings(demo=True)
    return KpiStage(
        _codec(),
        StagedMapping(store),
        StagedMapping(store),
        lambda: KpiAggregator(settings.kpi, current_on_demand=on_demand),
        lambda: None,
    )


def _finals(values: list[KpiValue]) -> dict[tuple, KpiValue]:
    out = {}
    for v in values:
        if v.final:
            out[
                (
                    v.kpi,
                    v.window_size,
                    v.site_id,
                    v.algorithm_name,
                    v.algorithm_version,
                    v.finding_code,
                    v.window_start_ms,
                )
            ] = v
    return out


def _contributions_log() -> tuple[list[InputMessage], dict[tuple, KpiValue]]:
    """A contributions log (one partition, ending in a close marker) and its finals."""
    settings = load_settings(demo=True)
    codec = _codec()
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, None)
    events = sample_events(300, seed=5, end_ms=NOW_MS)
    revisions: list[LineageRecord] = []
    for i in range(0, len(events), 25):
        revisions += processor.process(events[i : i + 25]).lineage
    agg = KpiAggregator(settings.kpi)
    rows: dict[str, LineageRecord] = {}
    ref_values: list[KpiValue] = []
    for r in revisions:
        ref_values += agg.apply(rows.get(lineage_key(r)), r)
        rows[lineage_key(r)] = r
    ref_values += agg.close_all()
    reference = _finals(ref_values)

    encoder = OutputEncoder(codec, TOPICS)
    contributions = encoder.contributions(revisions) + encoder.close_markers(1)
    log = [
        InputMessage(TOPICS.contributions, 0, off, m.key, m.value, m.headers)
        for off, m in enumerate(contributions)
    ]
    return log, reference


def _without_revision(values: dict[tuple, KpiValue]) -> dict[tuple, dict]:
    return {k: v.model_dump(exclude={"revision"}) for k, v in values.items()}


def test_kpi_stage_with_crashes_and_redelivery_equals_one_aggregator() -> None:
    log, reference = _contributions_log()
    store = DictPartitionedStore()
    rng = random.Random(7)
    committed, emitted = 0, []
    stage = _kpi_stage(store)
    while committed < len(log):
        end = min(len(log), committed + rng.randint(1, 40))
        batch = stage.process(log[committed:end])
        emitted += batch.kpis
        writes = stage.take_writes()
        if rng.random() < 0.3:  # kill -9: lose a suffix of the state writes, no commit
            store.write(writes[: rng.randint(0, len(writes))])
            stage = _kpi_stage(store)
            continue
        store.write(writes)
        committed = end
    assert _without_revision(_finals(emitted)) == _without_revision(reference)


def test_kpi_stage_checkpointed_every_few_batches_survives_crashes() -> None:
    """The worker's protocol: checkpoints every few batches, current values on demand."""
    log, reference = _contributions_log()
    store = DictPartitionedStore()
    rng = random.Random(11)
    committed = position = crashes = 0
    emitted: list[KpiValue] = []
    stage = _kpi_stage(store, on_demand=True)
    while committed < len(log):
        end = min(len(log), position + rng.randint(1, 10))
        emitted += stage.process(log[position:end]).kpis
        position = end
        if rng.random() < 0.3:
            emitted += stage.emit_current().kpis
        if rng.random() < 0.1:  # kill -9 between checkpoints: replay from the last one
            stage, position, crashes = _kpi_stage(store, on_demand=True), committed, crashes + 1
            continue
        if position == len(log) or rng.random() < 0.25:
            writes = stage.take_writes()
            if rng.random() < 0.2:  # kill -9 while writing the checkpoint
                store.write(writes[: rng.randint(0, len(writes))])
                stage, position, crashes = _kpi_stage(store, on_demand=True), committed, crashes + 1
                continue
            store.write(writes)
            committed = position
    assert crashes >= 3
    assert any(not v.final for v in emitted)
    assert _without_revision(_finals(emitted)) == _without_revision(reference)


def test_lineage_and_contributions_share_one_encoding() -> None:
    codec = _codec()
    settings = load_settings(demo=True)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, None)
    revisions = processor.process(sample_events(60, seed=2, end_ms=NOW_MS)).lineage
    encoder = OutputEncoder(codec, TOPICS)
    both = encoder.lineage_and_contributions(revisions)
    n = len(revisions)
    assert n > 0 and len(both) == 2 * n
    assert [m.topic for m in both] == [TOPICS.lineage] * n + [TOPICS.contributions] * n
    assert [(m.key, m.value) for m in both[n:]] == [
        (m.key, m.value) for m in encoder.contributions(revisions)
    ]
    assert [codec.decode(m.value, LineageRecord) for m in both[:n]] == revisions
    assert [m.key for m in both[:n]] == [lineage_key(r).encode() for r in revisions]
