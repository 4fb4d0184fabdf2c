"""Properties of the lineage join over generated events (hypothesis).

The central one is DESIGN §4's determinism: any permutation of the same events, with any
duplicates, ends in the same lineage *content* per key. Revision numbers and the hash
chain count the changes on the way, so they are compared through the chain's validity,
not for equality; :func:`content_hash` must agree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from schemas.records import LineageRecord
from streams.core.lineage.config import AlgorithmEligibility, LineageConfig
from streams.core.lineage.hashchain import (
    CHAIN_FIELDS,
    LineageKey,
    content_hash,
    lineage_key,
    verify_chain,
)
from streams.core.lineage.join import LineageJoiner, LineageRevision
from streams.core.lineage.store import MappingStudyStore

T0 = 1_700_000_000_000
MIN = 60_000
ROWS = (("ich-detector", "ICH"), ("pe-detector", "PE"))
STUDIES = (("site-a", "1.2.1"), ("site-a", "1.2.2"), ("site-b", "1.2.1"))
CONFIG = LineageConfig(
    demo=True,
    eligibility=(
        AlgorithmEligibility(
            algorithm_name="ich-detector", finding_code="ICH", modality="CT", body_parts=("HEAD",)
        ),
        AlgorithmEligibility(algorithm_name="pe-detector", finding_code="PE", modality="CT"),
    ),
)
SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Whole finding lists as single choices: far cheaper to generate than built one by one.
FINDING_SETS = (
    [()]
    + [
        tuple(
            Finding(finding_code=code, label=label, label_method=LabelMethod.NLP) for code in codes
        )
        for label in Label
        for codes in (("ICH",), ("PE",), ("ICH", "PE"), ("LVO",))
    ]
    + [
        (
            Finding(finding_code="ICH", label=Label.PRESENT, label_method=LabelMethod.MANUAL),
            Finding(finding_code="PE", label=Label.ABSENT, label_method=LabelMethod.LLM),
        )
    ]
)


@st.composite
def events(draw: st.DrawFn, dense: bool = False) -> list[Event]:
    """Distinct events (unique event_id) for a few studies and rows.

    ``dense`` puts every event in one study within three minutes, so that equal
    timestamps, and with them the event_id tie-breaks, are the rule.
    """
    times = st.integers(0, 2 if dense else 10).map(lambda m: T0 + m * MIN)
    optional_times = st.none() | times
    studies = STUDIES[:1] if dense else STUDIES
    count = draw(st.integers(1, 14))
    made: list[Event] = []
    for i in range(count):
        site_id, study_uid = draw(st.sampled_from(studies))
        name, finding = draw(st.sampled_from(ROWS))
        common: dict[str, Any] = {
            "event_id": f"e{i:02d}",
            "occurred_at_ms": draw(times),
            "site_id": site_id,
            "study_uid": study_uid,
        }
        kind = draw(st.sampled_from(("inference", "alert", "report")))
        if kind == "inference":
            made.append(
                InferenceEvent(
                    **common,
                    patient_id=draw(st.sampled_from((None, "PAT-1", "PAT-2"))),
                    modality="CT",
                    body_part=draw(st.sampled_from((None, "HEAD"))),
                    algorithm_name=name,
                    algorithm_version=draw(st.sampled_from(("1.0", "1.1"))),
                    finding_code=finding,
                    status=draw(st.sampled_from(InferenceStatus)),
                    result=draw(st.sampled_from(InferenceResult)),
                    score=draw(st.sampled_from((None, 0.1, 0.93))),
                    study_available_at_ms=draw(optional_times),
                    completed_at_ms=draw(optional_times),
                )
            )
        elif kind == "alert":
            made.append(
                AlertEvent(
                    **common,
                    alert_id="a1",
                    inference_event_id=draw(
                        st.none() | st.sampled_from([f"e{j:02d}" for j in range(count)])
                    ),
                    algorithm_name=name,
                    algorithm_version=draw(st.sampled_from(("1.0", "1.1"))),
                    finding_code=finding,
                    state=draw(st.sampled_from(AlertState)),
                    channel=draw(st.sampled_from(AlertChannel)),
                )
            )
        else:
            made.append(
                ReportEvent(
                    **common,
                    accession_number=draw(st.sampled_from((None, "ACC-1", "ACC-2"))),
                    modality=draw(st.sampled_from((None, "CT", "MR"))),
                    body_part=draw(st.sampled_from((None, "HEAD", "CHEST"))),
                    report_id=draw(st.sampled_from(("r1", "r2"))),
                    status=draw(st.sampled_from(ReportStatus)),
                    exam_completed_at_ms=draw(optional_times),
                    critical_result_communicated_at_ms=draw(optional_times),
                    findings=draw(st.sampled_from(FINDING_SETS)),
                )
            )
    return made


@st.composite
def reordered(draw: st.DrawFn, dense: bool = False) -> tuple[list[Event], list[Event]]:
    """A set of events, and a permutation of it with some events delivered again."""
    originals = draw(events(dense))
    again = draw(st.lists(st.sampled_from(originals), max_size=6))
    return originals, draw(st.permutations(originals + again))


def replay(joiner: LineageJoiner, stream: list[Event]) -> list[LineageRevision]:
    revisions: list[LineageRevision] = []
    for event in stream:
        output = joiner.apply(event)
        assert not output.dead_letters
        revisions.extend(output.revisions)
    return revisions


def final_records(revisions: list[LineageRevision]) -> dict[LineageKey, LineageRecord]:
    latest: dict[LineageKey, LineageRecord] = {}
    for revision in revisions:
        latest[lineage_key(revision.new)] = revision.new
    return latest


def content(records: dict[LineageKey, LineageRecord]) -> dict[LineageKey, dict[str, object]]:
    return {k: r.model_dump(exclude=set(CHAIN_FIELDS)) for k, r in records.items()}


@SETTINGS
@given(reordered() | reordered(dense=True))
def test_any_order_and_duplication_gives_the_same_final_content(
    case: tuple[list[Event], list[Event]],
) -> None:
    originals, stream = case
    expected = final_records(replay(LineageJoiner(CONFIG), originals))
    actual = final_records(replay(LineageJoiner(CONFIG), stream))
    assert content(actual) == content(expected)
    assert {k: content_hash(r) for k, r in actual.items()} == {
        k: content_hash(r) for k, r in expected.items()
    }


@SETTINGS
@given(reordered())
def test_revisions_change_content_and_form_valid_chains(
    case: tuple[list[Event], list[Event]],
) -> None:
    _, stream = case
    joiner = LineageJoiner(CONFIG)
    revisions = replay(joiner, stream)
    previous: dict[LineageKey, LineageRecord] = {}
    for revision in revisions:
        key = lineage_key(revision.new)
        before = previous.get(key)
        assert revision.old == before  # what the aggregator retracts is what it was given
        if before is None:
            assert revision.new.revision == 1
        else:
            assert revision.new.revision == before.revision + 1
            assert content_hash(revision.new) != content_hash(before)
        previous[key] = revision.new
    assert verify_chain([r.new for r in revisions]) == []
    assert sorted(joiner.current_records(), key=lineage_key) == sorted(
        previous.values(), key=lineage_key
    )


@SETTINGS
@given(events())
def test_redelivering_everything_emits_nothing(stream: list[Event]) -> None:
    joiner = LineageJoiner(CONFIG)
    replay(joiner, stream)
    assert not any(joiner.apply(event) for event in stream)


@SETTINGS
@given(reordered())
def test_encoded_state_and_no_cache_behave_like_in_memory_state(
    case: tuple[list[Event], list[Event]],
) -> None:
    _, stream = case
    in_memory = [(r.old, r.new) for r in replay(LineageJoiner(CONFIG), stream)]
    encoded = LineageJoiner(CONFIG, MappingStudyStore({}), recent_studies=1)
    uncached = LineageJoiner(CONFIG, recent_studies=0)
    assert [(r.old, r.new) for r in replay(encoded, stream)] == in_memory
    assert [(r.old, r.new) for r in replay(uncached, stream)] == in_memory


@SETTINGS
@given(reordered(), st.integers(1, 8))
def test_batches_give_the_same_final_content_and_valid_chains(
    case: tuple[list[Event], list[Event]], batch: int
) -> None:
    originals, stream = case
    expected = final_records(replay(LineageJoiner(CONFIG), originals))
    joiner = LineageJoiner(CONFIG)
    revisions: list[LineageRevision] = []
    for start in range(0, len(stream), batch):
        revisions.extend(joiner.apply_many(stream[start : start + batch]).revisions)
    assert content(final_records(revisions)) == content(expected)
    assert verify_chain([r.new for r in revisions]) == []
