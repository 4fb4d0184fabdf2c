"""Exact applied-offset tracking: gaps in delivery are applied, redeliveries are not.

A stage skips a message only when its own offset is recorded as applied. These tests
feed the lineage and KPI stages deliveries with gaps (offsets 10-20 first, then 5-9)
and re-reads from earlier offsets after a checkpoint.
"""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.corpus import sample_events
from streams.runtime.applied import AppliedOffsets
from streams.runtime.outputs import lineage_key
from streams.runtime.staged_store import DictPartitionedStore
from streams.runtime.stages.lineage import LineageStage, applied_key
from tests.unit.runtime.test_live_stages import (
    NOW_MS,
    TOPICS,
    _codec,
    _contributions_log,
    _finals,
    _kpi_stage,
    _lineage_stage,
    _messages,
    _without_revision,
)

# -- AppliedOffsets ------------------------------------------------------------------


def test_offsets_beyond_a_gap_do_not_count_the_gap_as_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied = AppliedOffsets("t[0]")
    with caplog.at_level(logging.WARNING, logger="imgov.worker"):
        for offset in (*range(10, 21), 25):
            applied.add(offset)
    assert applied.ranges == [(10, 21), (25, 26)]
    assert applied.gaps == [(21, 25)]
    assert 9 not in applied and 10 in applied and 20 in applied and 21 not in applied
    assert "t[0]: gap in delivery, offsets 21-24 not delivered (yet) before 25" in caplog.text
    for offset in range(5, 10):
        applied.add(offset)
    assert applied.ranges == [(5, 21), (25, 26)]
    for offset in range(21, 25):
        applied.add(offset)
    assert applied.ranges == [(5, 26)] and applied.gaps == [] and applied.next_offset == 26
    assert "t[0]: gap in delivery filled up to offset 24" in caplog.text


def test_missing_below_names_a_gap_before_an_offset() -> None:
    applied = AppliedOffsets("t[0]")
    assert not applied.missing_below(7)  # nothing applied: nothing known to be missing
    for offset in (3, 4, 5):
        applied.add(offset)
    assert not applied.missing_below(6)  # the next one
    assert not applied.missing_below(1)  # re-read from before the first one applied
    assert applied.missing_below(7)  # 6 was never delivered
    applied.add(9)
    assert applied.missing_below(10) and not applied.missing_below(5)
    applied.add(6)
    applied.add(7)
    applied.add(8)
    assert not applied.missing_below(10)


def test_missing_below_a_committed_floor_counts_a_first_delivery_beyond_it_as_a_gap() -> None:
    applied = AppliedOffsets("t[0]")
    assert applied.missing_below(7, floor=0)  # nothing applied, yet 0-6 are to come
    assert not applied.missing_below(0, floor=0)
    for offset in (331, 332):  # delivered first, beyond offsets from the commit on
        applied.add(offset)
    assert applied.missing_below(333, floor=7)
    assert not applied.missing_below(333)  # without the floor: where it started
    for offset in range(7, 331):
        applied.add(offset)
    assert not applied.missing_below(333, floor=7)
    assert applied.missing_below(333, floor=3)  # 3-6 are to come too
    assert not applied.missing_below(333, floor=9)  # committed past the first applied


def test_applied_offsets_round_trip_and_refuse_bad_records() -> None:
    applied = AppliedOffsets("t[1]", [(7, 9), (0, 3), (2, 5)])  # overlapping ranges merge
    assert applied.ranges == [(0, 5), (7, 9)]
    assert AppliedOffsets.from_bytes("t[1]", applied.to_bytes()) == applied
    assert applied.to_bytes() == b"[[0,5],[7,9]]"
    for bad in (b"{", b"[[1]]", b'[["a", 2]]', b"[[3, 3]]", b"7"):
        with pytest.raises(ValueError, match="t\\[1\\]"):
            AppliedOffsets.from_bytes("t[1]", bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), max_size=120))
def test_any_delivery_order_records_exactly_the_offsets_delivered(offsets: list[int]) -> None:
    applied = AppliedOffsets("t[0]")
    for offset in offsets:
        applied.add(offset)
    assert [o for o in range(62) if o in applied] == sorted(set(offsets))
    ranges = applied.ranges
    assert all(start < end for start, end in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))  # disjoint, gaps
    assert AppliedOffsets.from_bytes("t[0]", applied.to_bytes()) == applied


# -- the lineage stage ---------------------------------------------------------------


def _one_partition(count: int) -> list:
    events = sorted(sample_events(count, seed=17, end_ms=NOW_MS), key=lambda e: e.occurred_at_ms)
    return _messages(events, _codec(), partitions=1)  # offset = position


def _one_partition_stage(store: DictPartitionedStore) -> LineageStage:
    stage = _lineage_stage(store)
    stage.assign([0])
    return stage


def _latest(records: list) -> dict[str, dict]:
    """The latest lineage per row, without what counts revisions (batching)."""
    latest = {lineage_key(r): r for r in sorted(records, key=lambda r: r.revision)}
    exclude = {"revision", "prev_hash", "record_hash", "event_ids"}
    return {
        k: {**r.model_dump(exclude=exclude), "event_ids": sorted(r.event_ids)}
        for k, r in latest.items()
    }


def test_lineage_stage_applies_offsets_delivered_after_a_gap() -> None:
    messages = _one_partition(40)
    store = DictPartitionedStore()
    stage = _one_partition_stage(store)
    later = stage.process(messages[10:21])
    assert len(later.events) == 11
    earlier = stage.process(messages[5:10])  # the gap comes after all: applied
    assert [s.offset for _, s in earlier.events] == [5, 6, 7, 8, 9]
    assert earlier.redelivered == 0
    again = stage.process(messages[5:21])  # a re-read: nothing applies twice
    assert again.redelivered == 16 and not again.events and not again.lineage
    stage.state.commit()
    assert store.data[applied_key(TOPICS.inference, 0).encode()][2:] == b"[[5,21]]"

    reference = _one_partition_stage(DictPartitionedStore())
    in_order = reference.process(messages[5:21])
    assert _latest(later.lineage + earlier.lineage) == _latest(in_order.lineage)


def test_lineage_stage_re_reading_from_an_earlier_offset_after_a_checkpoint_ends_equal() -> None:
    messages = _one_partition(100)
    store = DictPartitionedStore()
    stage = _one_partition_stage(store)
    stage.process(messages[:60])
    stage.state.commit()  # the checkpoint
    restarted = _lineage_stage(store)  # a restart: state from the store only
    restarted.rebuild()
    restarted.assign([0])
    rerun = restarted.process(messages[20:100])  # re-read from offset 20
    restarted.state.commit()
    assert rerun.redelivered == 40 and {s.offset for _, s in rerun.events} == set(range(60, 100))

    reference_store = DictPartitionedStore()
    reference = _one_partition_stage(reference_store)
    reference.process(messages[:60])
    reference.state.commit()
    reference.process(messages[60:100])
    reference.state.commit()
    assert store.data == reference_store.data


def test_applied_offsets_are_written_after_the_study_states_they_describe() -> None:
    messages = _one_partition(30)
    store = DictPartitionedStore()
    stage = _one_partition_stage(store)
    stage.process(messages[:10])
    stage.state.commit()
    stage.process(messages[10:30])
    writes = stage.state.take_writes()
    assert writes[-1][1] == applied_key(TOPICS.inference, 0).encode()
    assert len(writes) > 1


# -- the KPI stage -------------------------------------------------------------------


def test_kpi_stage_applies_contributions_delivered_after_a_gap() -> None:
    log, reference = _contributions_log()
    stage = _kpi_stage(DictPartitionedStore())
    data = [m for m in log if m.value]
    first, gap = data[10].offset, data[5].offset
    later = stage.process(log[first : first + 11])  # a new partition, delivered from 10
    earlier = stage.process(log[gap:first])  # then the offsets before it
    # Every one is applied: counted, or (an older revision of a row the later offsets
    # already moved on) recognised as superseded; none is taken for a redelivery.
    assert earlier.redelivered == 0
    assert earlier.applied + earlier.duplicates == sum(1 for m in log[gap:first] if m.value)
    assert earlier.applied > 0
    again = stage.process(log[gap : first + 11])
    assert again.applied == 0
    rest = stage.process(log[:gap] + log[first + 11 :])
    emitted = later.kpis + earlier.kpis + again.kpis + rest.kpis
    assert _without_revision(_finals(emitted)) == _without_revision(reference)


def test_kpi_stage_re_reading_from_an_earlier_offset_after_a_checkpoint_ends_equal() -> None:
    log, reference = _contributions_log()
    store = DictPartitionedStore()
    stage = _kpi_stage(store)
    cut = 2 * len(log) // 3
    emitted = stage.process(log[:cut]).kpis
    store.write(stage.take_writes())  # the checkpoint
    restarted = _kpi_stage(store)
    rerun = restarted.process(log[len(log) // 3 :])  # re-read from well before it
    assert rerun.applied == sum(1 for m in log[cut:] if m.value)
    emitted += rerun.kpis
    assert _without_revision(_finals(emitted)) == _without_revision(reference)
