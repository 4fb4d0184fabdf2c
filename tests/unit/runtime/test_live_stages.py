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


def _kpi_stage(store: DictPartitionedStore) -> KpiStage:
    settings = load_settings(demo=True)
    return KpiStage(
        _codec(),
        StagedMapping(store),
        StagedMapping(store),
        lambda: KpiAggregator(settings.kpi),
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


def test_kpi_stage_with_crashes_and_redelivery_equals_one_aggregator() -> None:
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
    assert {k: v.model_dump(exclude={"revision"}) for k, v in _finals(emitted).items()} == {
        k: v.model_dump(exclude={"revision"}) for k, v in reference.items()
    }
