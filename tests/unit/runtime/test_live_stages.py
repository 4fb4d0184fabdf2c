"""The live worker's stages and staged state, without a broker (memory stores)."""

from __future__ import annotations

import random

import pytest

from schemas.codec import Codec
from schemas.corpus import sample_events
from schemas.records import KpiValue, LineageRecord
from schemas.registry import registry_from_environ
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.pipeline import GovernanceProcessor
from streams.governance import build_pseudonymiser, lineage_config, load_settings
from streams.runtime.outputs import InputMessage, OutputEncoder, kpi_window_key, lineage_key
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping, StagedWrite
from streams.runtime.stages import KpiStage, LineageStage
from streams.topics import WorkerTopics

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
        upstream_partitions=3,
    )


def _finals(values: list[KpiValue]) -> dict[str, KpiValue]:
    """The last final value of each window (its latest revision)."""
    return {kpi_window_key(v): v for v in values if v.final}


def _contributions_log() -> tuple[list[InputMessage], dict[str, KpiValue]]:
    """A contributions log as the lineage stage writes it, and the finals of replay.

    The events are read from three input partitions, batch by batch; after each batch
    come its contributions, then the watermark records of the partitions that moved
    (what ``LineageRunner`` produces), all into one contributions partition, which
    ends with an idle-close marker.
    """
    settings = load_settings(demo=True)
    codec = _codec()
    # Each input partition in event-time order, as producers append to a topic.
    events = sorted(sample_events(300, seed=5, end_ms=NOW_MS), key=lambda e: e.occurred_at_ms)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, None)
    ref_values = processor.process(events).kpis + processor.close().kpis
    assert set(processor.aggregator.too_late.values()) == {0}
    reference = _finals(ref_values)

    stage = _lineage_stage(DictPartitionedStore())
    stage.assign(range(3))
    encoder = OutputEncoder(codec, TOPICS)
    contributions = []
    messages = _messages(events, codec)
    for i in range(0, len(messages), 25):
        batch = stage.process(messages[i : i + 25])
        stage.state.commit()
        contributions += encoder.contributions(batch.lineage)
        contributions += encoder.watermarks(stage.watermark_updates(), 1)
    contributions += encoder.close_markers(1)
    log = [
        InputMessage(TOPICS.contributions, 0, off, m.key, m.value, m.headers)
        for off, m in enumerate(contributions)
    ]
    return log, reference


def _without_revision(values: dict[str, KpiValue]) -> dict[str, dict]:
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


def _at(topic: str, partition: int, offset: int, event: object, codec: Codec) -> InputMessage:
    return InputMessage(topic, partition, offset, b"k", codec.encode(event))  # type: ignore[arg-type]


def test_lineage_stage_watermark_per_partition_is_the_minimum_over_its_topics() -> None:
    codec = _codec()
    settings = load_settings(demo=True)
    lateness = settings.kpi.allowed_lateness_ms
    stage = LineageStage(
        lineage_config(settings),
        lateness,
        codec,
        StagedMapping(DictPartitionedStore()),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
        (TOPICS.inference, TOPICS.report),
    )
    stage.assign([0, 1])
    hour = 3_600_000
    base = NOW_MS - NOW_MS % hour - 100 * hour
    events = sample_events(4, seed=1, end_ms=NOW_MS)
    at = [e.model_copy(update={"occurred_at_ms": base + i * hour}) for i, e in enumerate(events)]
    # Partition 0: inference far ahead (30 h), report at 2 h. Partition 1: nothing yet.
    stage.process(
        [
            _at(
                TOPICS.inference,
                0,
                0,
                at[0].model_copy(update={"occurred_at_ms": base + 30 * hour}),
                codec,
            ),
            _at(
                TOPICS.report,
                0,
                0,
                at[1].model_copy(update={"occurred_at_ms": base + 2 * hour}),
                codec,
            ),
        ]
    )
    stage.state.commit()
    assert stage.partition_watermark(0) == base + 2 * hour - lateness
    assert stage.partition_watermark(1) is None
    assert stage.watermark_ms is None  # partition 1 holds retention back
    assert stage.watermark_updates() == [(0, base)]  # whole hours only
    assert stage.watermark_updates() == []  # told once
    # The inference topic of partition 0 runs 28 h ahead of the slowest source.
    assert stage.sources_ahead(2 * hour) == {(TOPICS.inference, 0)}
    assert stage.sources_ahead(40 * hour) == set()
    # Partition 1 is empty and caught up: idle, told as such, no longer holding back.
    stage.mark_idle(TOPICS.inference, 1)
    stage.mark_idle(TOPICS.report, 1)
    assert stage.watermark_updates() == [(1, None)]
    assert stage.watermark_ms == base + 2 * hour - lateness
    # Partition 0's report topic idle too: partition 0 follows its inference topic.
    stage.mark_idle(TOPICS.report, 0)
    assert stage.partition_watermark(0) == base + 30 * hour - lateness
    assert stage.watermark_updates() == [(0, base + 28 * hour)]


def test_kpi_windows_close_only_when_every_upstream_partition_passed_them() -> None:
    codec = _codec()
    encoder = OutputEncoder(codec, TOPICS)
    settings = load_settings(demo=True)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, None)
    events = sorted(sample_events(120, seed=9, end_ms=NOW_MS), key=lambda e: e.occurred_at_ms)
    revisions = processor.process(events).lineage
    end = max(r.updated_at_ms for r in revisions)
    log = encoder.contributions(revisions) + encoder.watermarks([(0, end + 40 * 86_400_000)], 1)
    messages = [
        InputMessage(TOPICS.contributions, 0, off, m.key, m.value, m.headers)
        for off, m in enumerate(log)
    ]
    stage = _kpi_stage(DictPartitionedStore())  # three upstream partitions
    out = stage.process(messages)
    assert out.kpis == [] or all(not v.final for v in out.kpis)  # 1 and 2 not heard from
    more = encoder.watermarks([(1, end + 40 * 86_400_000), (2, None)], 1)
    out = stage.process(
        [
            InputMessage(TOPICS.contributions, 0, len(log) + i, m.key, m.value, m.headers)
            for i, m in enumerate(more)
        ]
    )
    assert out.kpis and all(v.final for v in out.kpis)
    assert stage.watermarks() == {0: end + 40 * 86_400_000}
    # A contribution for a window closed long ago: applied nowhere, dead-lettered.
    late = revisions[0]
    late_again = late.model_copy(update={"revision": 99, "study_uid": late.study_uid + ".x"})
    [message] = encoder.contributions([late_again])
    offset = len(log) + len(more)
    out = stage.process([InputMessage(TOPICS.contributions, 0, offset, message.key, message.value)])
    assert out.kpis == []
    assert len(out.dead_letters) == 1
    letter = out.dead_letters[0]
    assert letter.reason.value == "LATE_AFTER_WINDOW_CLOSED"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        TOPICS.contributions,
        0,
        offset,
    )
    assert sum(stage.too_late().values()) > 0


def test_offsets_skipped_by_delivery_are_applied_when_they_come_after_all() -> None:
    """Faust can deliver beyond a gap after a rebalance; the guard re-reads the gap.

    A snapshot taken after the gap must not count the skipped offsets as applied
    (they are not "at or below the last applied offset" in any useful sense).
    """
    log, reference = _contributions_log()
    store = DictPartitionedStore()
    stage = _kpi_stage(store)
    gap = range(len(log) // 3, len(log) // 3 + 40)
    emitted = stage.process(log[: gap.start]).kpis
    emitted += stage.process(log[gap.stop : 2 * len(log) // 3]).kpis  # the gap is skipped
    store.write(stage.take_writes())  # checkpoint while the gap is missing
    stage = _kpi_stage(store)  # a rebalance: reloaded from the snapshot
    emitted += stage.process(log[gap.start :]).kpis  # the guard re-reads from the gap
    assert _without_revision(_finals(emitted)) == _without_revision(reference)


def test_watermarks_and_close_delivered_beyond_a_gap_wait_for_it() -> None:
    """Faust delivered the rest of a partition, its close marker included, before a gap.

    The watermark records and the close marker vouch for every contribution before
    them: applied at once, they closed the windows the gap's contributions belong to
    (a live test saw 1,338 of them dead-lettered). Held until the gap is filled, the
    stage ends as if delivery had been in order.
    """
    log, reference = _contributions_log()
    stage = _kpi_stage(DictPartitionedStore())
    gap = range(len(log) // 4, len(log) // 2)
    first = stage.process(log[: gap.start])
    beyond = stage.process(log[gap.stop :])  # watermarks and the close marker, early
    assert beyond.closed == 0 and not beyond.dead_letters
    filled = stage.process(log[gap.start : gap.stop])
    assert filled.closed == 1 and not filled.dead_letters
    assert set(stage.too_late().values()) == {0}
    emitted = first.kpis + beyond.kpis + filled.kpis
    assert _without_revision(_finals(emitted)) == _without_revision(reference)
    # Redelivered after all, the held messages change nothing.
    again = stage.process(log[gap.stop :])
    assert again.closed == 0 and not again.kpis


@pytest.mark.parametrize("floor", [None, 0])
def test_watermarks_delivered_first_wait_for_the_offsets_from_the_committed_one(
    floor: int | None,
) -> None:
    """A partition's first delivery is beyond its committed offset (0 here: no snapshot
    yet): its watermark records closed the windows of every contribution before them
    (17 dead letters in a live run). Told the committed offset, the stage holds them."""
    log, reference = _contributions_log()
    stage = _kpi_stage(DictPartitionedStore())
    if floor is not None:
        stage.floors = {0: floor}
    half = len(log) // 2
    beyond = stage.process(log[half:])
    filled = stage.process(log[:half])
    late = beyond.dead_letters + filled.dead_letters
    emitted = beyond.kpis + filled.kpis
    if floor is None:  # where the partition starts is not known: the old behaviour
        assert late
    else:
        assert not late and beyond.closed == 0 and filled.closed == 1
        assert _without_revision(_finals(emitted)) == _without_revision(reference)


def test_a_new_owner_missing_the_rows_written_after_a_snapshot_counts_each_row_once() -> None:
    """A rebalance: the old owner wrote its last snapshot, then the batch's rows, one
    by one, after the partition had been handed over; the new owner restored the
    changelog before those rows reached it (a live run: 400 ms of row writes). Faust
    then delivered contributions beyond the commit first, later revisions of rows the
    new owner did not find: it counted the old revision and the new one (5 extra
    studies in each of three daily windows). Twice over, as a new owner can lose its
    partition the same way."""
    log, reference = _contributions_log()
    store = DictPartitionedStore()

    def snapshots_only(writes: list[StagedWrite]) -> list[StagedWrite]:
        kept = [w for w in writes if b"snapshot:" in w[1]]
        assert 0 < len(kept) < len(writes)
        return kept

    stage = _kpi_stage(store)
    first, second = len(log) // 3, 2 * len(log) // 3
    emitted = stage.process(log[:first]).kpis
    store.write(snapshots_only(stage.take_writes()))
    stage = _kpi_stage(store)
    emitted += stage.process(log[first:second]).kpis  # beyond the commit, first
    emitted += stage.process(log[:first]).kpis  # then the re-read from the commit
    store.write(snapshots_only(stage.take_writes()))
    stage = _kpi_stage(store)
    emitted += stage.process(log[second:]).kpis
    emitted += stage.process(log[first:second]).kpis
    assert _without_revision(_finals(emitted)) == _without_revision(reference)


@pytest.mark.parametrize("delivery", ["in log order", "the recomputed run first"])
def test_a_revision_recomputed_after_a_crash_replaces_the_one_applied(delivery: str) -> None:
    """The lineage stage's last batch re-runs after a crash, cut differently: a row gets
    the same revision number with more events. The KPI stage counts the new content,
    also when Faust delivers the recomputed run before the first one (a gap in delivery:
    the 2-worker backlog test ended with the first run's revisions counted)."""
    settings = load_settings(demo=True)
    codec = _codec()
    events = sorted(sample_events(300, seed=5, end_ms=NOW_MS), key=lambda e: e.occurred_at_ms)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, None)
    reference = _finals(processor.process(events).kpis + processor.close().kpis)

    messages = _messages(events, codec, partitions=1)
    cut, crash = int(len(messages) * 0.6), int(len(messages) * 0.7)
    store = DictPartitionedStore()
    stage = _lineage_stage(store)
    stage.assign([0])
    done = stage.process(messages[:cut])
    stage.state.commit()
    first_run = stage.process(messages[cut:crash])  # produced, then kill -9: no state
    restarted = _lineage_stage(store)
    restarted.rebuild()
    restarted.assign([0])
    second_run = restarted.process(messages[cut:])  # redelivered with what came since
    first = {lineage_key(r): r for r in first_run.lineage}
    recomputed = [
        r
        for r in second_run.lineage
        if lineage_key(r) in first
        and first[lineage_key(r)].revision == r.revision
        and first[lineage_key(r)].record_hash != r.record_hash
    ]
    assert recomputed, "the scenario needs a revision recomputed with other content"

    encoder = OutputEncoder(codec, TOPICS)
    contributions = (
        encoder.contributions(done.lineage)
        + encoder.contributions(first_run.lineage)
        + encoder.contributions(second_run.lineage)
        + encoder.close_markers(1)
    )
    log = [
        InputMessage(TOPICS.contributions, 0, off, m.key, m.value, m.headers)
        for off, m in enumerate(contributions)
    ]
    stage = _kpi_stage(DictPartitionedStore())
    if delivery == "in log order":
        emitted = stage.process(log).kpis
    else:
        a, b = len(done.lineage), len(done.lineage) + len(first_run.lineage)
        emitted = [*stage.process(log[:a]).kpis, *stage.process(log[b:]).kpis]
        emitted += stage.process(log[a:b]).kpis  # the gap: the first run, late
    assert _without_revision(_finals(emitted)) == _without_revision(reference)
