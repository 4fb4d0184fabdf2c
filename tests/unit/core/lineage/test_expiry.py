"""Retention, eviction, tombstones and late events of the lineage join (DESIGN §4)."""

from __future__ import annotations

import json
from typing import Any

from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Event,
    Finding,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportEvent,
    ReportStatus,
)
from schemas.records import Completeness, DeadLetterReason, Outcome
from schemas.units import DAY_MS
from streams.core.lineage.config import AlgorithmEligibility, LineageConfig
from streams.core.lineage.expiry import ExpiryIndex
from streams.core.lineage.hashchain import verify_chain
from streams.core.lineage.join import LineageJoiner, event_json_bytes
from streams.core.lineage.store import InMemoryStudyStore, MappingStudyStore

T0 = 1_700_000_000_000
RETENTION = 30 * DAY_MS
CONFIG = LineageConfig(
    demo=True,
    eligibility=(
        AlgorithmEligibility(algorithm_name="ich-detector", finding_code="ICH", modality="CT"),
    ),
)


def inference(study: str, t: int, eid: str | None = None) -> InferenceEvent:
    return InferenceEvent(
        event_id=eid or f"inf-{study}-{t}",
        occurred_at_ms=t,
        site_id="site-a",
        study_uid=study,
        patient_id="PAT-0001",
        modality="CT",
        algorithm_name="ich-detector",
        algorithm_version="2.1",
        finding_code="ICH",
        status=InferenceStatus.SUCCEEDED,
        result=InferenceResult.POSITIVE,
    )


def final_report(study: str, t: int, eid: str | None = None) -> ReportEvent:
    return ReportEvent(
        event_id=eid or f"rep-{study}-{t}",
        occurred_at_ms=t,
        site_id="site-a",
        study_uid=study,
        modality="CT",
        report_id="rep-1",
        status=ReportStatus.FINAL,
        findings=(Finding(finding_code="ICH", label=Label.ABSENT, label_method=LabelMethod.NLP),),
    )


def raised(study: str, t: int) -> AlertEvent:
    return AlertEvent(
        event_id=f"al-{study}-{t}",
        occurred_at_ms=t,
        site_id="site-a",
        study_uid=study,
        alert_id="a1",
        algorithm_name="ich-detector",
        algorithm_version="2.1",
        finding_code="ICH",
        state=AlertState.RAISED,
        channel=AlertChannel.PAGE,
    )


def joiner_with(*events: Event, **config: Any) -> LineageJoiner:
    joiner = LineageJoiner(CONFIG.model_copy(update=config) if config else CONFIG)
    for event in events:
        joiner.apply(event)
    return joiner


def test_eviction_expires_incomplete_rows_and_leaves_complete_ones() -> None:
    joiner = joiner_with(
        inference("no-report", T0),  # AI but no report -> EXPIRED_NO_REPORT
        final_report("no-ai", T0),  # eligible report but no AI -> EXPIRED_NO_AI
        inference("complete", T0),
        final_report("complete", T0 + DAY_MS),
    )
    assert not joiner.advance(T0 + RETENTION - 1)  # not yet
    out = joiner.advance(T0 + RETENTION)
    expired = {r.new.study_uid: r for r in out.revisions}
    assert set(expired) == {"no-report", "no-ai"}
    assert expired["no-report"].new.completeness is Completeness.EXPIRED_NO_REPORT
    assert expired["no-report"].new.outcome is Outcome.AWAITING_REPORT
    assert expired["no-ai"].new.completeness is Completeness.EXPIRED_NO_AI
    assert expired["no-ai"].new.outcome is Outcome.NO_AI_RESULT
    for revision in out.revisions:
        assert revision.old is not None and revision.new.revision == revision.old.revision + 1
        assert revision.new.updated_at_ms == revision.old.updated_at_ms  # event time, not clock
    assert not joiner.advance(T0 + DAY_MS + RETENTION)  # complete: evicted silently
    assert list(joiner.current_records()) == []


def test_eviction_is_measured_from_the_last_event() -> None:
    joiner = joiner_with(inference("s", T0), raised("s", T0 + 5 * DAY_MS))
    assert not joiner.advance(T0 + RETENTION)
    out = joiner.advance(T0 + 5 * DAY_MS + RETENTION)
    assert [r.new.completeness for r in out.revisions] == [Completeness.EXPIRED_NO_REPORT]


def test_event_for_an_evicted_study_is_a_late_dead_letter() -> None:
    joiner = joiner_with(inference("s", T0))
    joiner.advance(T0 + RETENTION)
    late = final_report("s", T0 + RETENTION + 1)
    out = joiner.apply(late)
    assert not out.revisions
    (letter,) = out.dead_letters
    assert letter.reason is DeadLetterReason.LATE_AFTER_EVICTION
    assert letter.value == event_json_bytes(late)
    assert json.loads(letter.value)["event_type"] == "report"
    assert (letter.event_id, letter.study_uid) == (late.event_id, "s")
    assert letter.source_topic is None and letter.source_offset is None and letter.key is None
    assert "s" not in letter.message.split()  # no identifiers in the message


def test_unknown_study_older_than_retention_is_a_late_dead_letter() -> None:
    joiner = joiner_with(inference("recent", T0 + RETENTION))
    joiner.advance(T0 + RETENTION)
    (letter,) = joiner.apply(inference("old", T0)).dead_letters
    assert letter.reason is DeadLetterReason.LATE_AFTER_EVICTION
    assert joiner.apply(inference("young", T0 + 1)).revisions


def test_tombstones_are_forgotten_after_the_memory_period() -> None:
    store = InMemoryStudyStore()
    joiner = LineageJoiner(CONFIG.model_copy(update={"evicted_study_memory_ms": DAY_MS}), store)
    joiner.apply(inference("s", T0))
    joiner.advance(T0 + RETENTION)
    assert len(store) == 1  # the tombstone
    joiner.advance(T0 + RETENTION + DAY_MS)
    assert len(store) == 0
    # A recent event for the forgotten study starts a new lineage (documented limit).
    assert joiner.apply(final_report("s", T0 + RETENTION + DAY_MS)).revisions


def test_watermark_that_does_not_advance_does_nothing() -> None:
    joiner = joiner_with(inference("s", T0))
    joiner.advance(T0 + RETENTION + 10)
    assert joiner.watermark_ms == T0 + RETENTION + 10
    assert not joiner.advance(T0)
    assert joiner.watermark_ms == T0 + RETENTION + 10


def test_expired_revisions_come_in_due_order_then_key_order() -> None:
    events = [inference(s, T0 + dt) for s, dt in (("b", 0), ("a", 0), ("c", -5))]
    out = joiner_with(*events).advance(T0 + RETENTION)
    assert [r.new.study_uid for r in out.revisions] == ["c", "a", "b"]


def test_a_new_joiner_rebuilds_its_expiry_index_from_the_store() -> None:
    store = MappingStudyStore({})
    first = LineageJoiner(CONFIG, store)
    emitted = first.apply(inference("s", T0)).records
    second = LineageJoiner(CONFIG, store)  # e.g. after a restart
    out = second.advance(T0 + RETENTION)
    assert [r.new.completeness for r in out.revisions] == [Completeness.EXPIRED_NO_REPORT]
    assert verify_chain([*emitted, *out.records]) == []


def test_oversized_study_sends_further_events_to_dead_letters() -> None:
    joiner = joiner_with(inference("s", T0, "e1"), inference("s", T0, "e2"), max_events_per_study=2)
    (letter,) = joiner.apply(inference("s", T0, "e3")).dead_letters
    assert letter.reason is DeadLetterReason.OVERSIZED
    assert not joiner.apply(inference("s", T0, "e1"))  # a duplicate is still just a duplicate


def test_expiry_index_pops_only_due_keys_in_order() -> None:
    index = ExpiryIndex(bucket_ms=10)
    index.schedule(("s", "a"), 25)
    index.schedule(("s", "b"), 5)
    index.schedule(("s", "c"), 21)
    index.schedule(("s", "d"), 100)
    index.schedule(("s", "b"), 22)  # moved later
    index.discard(("s", "d"))
    assert index.pop_due(21) == [(21, ("s", "c"))]
    assert index.pop_due(24) == [(22, ("s", "b"))]
    assert len(index) == 1
    assert index.pop_due(1_000) == [(25, ("s", "a"))]
    assert index.pop_due(10_000) == [] and len(index) == 0
