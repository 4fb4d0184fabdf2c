"""Hand-written examples of the lineage join: one per outcome, per derived field, per rule."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

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
from schemas.records import Completeness, LineageRecord, Outcome, ReportLabel
from streams.core.lineage.config import AlgorithmEligibility, LineageConfig
from streams.core.lineage.hashchain import CHAIN_FIELDS, record_hash, verify_chain
from streams.core.lineage.join import JoinOutput, LineageJoiner
from streams.core.lineage.outcome import RecordContent
from streams.core.lineage.pseudonym import IdentifierKind, Pseudonymiser
from streams.core.lineage.store import MappingStudyStore

T0 = 1_700_000_000_000
MIN = 60_000
SITE, STUDY = "site-a", "1.2.840.1"
ICH = ("ich-detector", "ICH")
CONFIG = LineageConfig(
    demo=True,
    eligibility=(
        AlgorithmEligibility(
            algorithm_name="ich-detector", finding_code="ICH", modality="CT", body_parts=("HEAD",)
        ),
    ),
)


def inference(eid: str = "inf-1", t: int = T0 + 3 * MIN, **kw: Any) -> InferenceEvent:
    fields: dict[str, Any] = {
        "event_id": eid,
        "occurred_at_ms": t,
        "site_id": SITE,
        "study_uid": STUDY,
        "patient_id": "PAT-0001",
        "accession_number": "ACC-0001",
        "modality": "CT",
        "body_part": "HEAD",
        "manufacturer": "ACME",
        "algorithm_name": "ich-detector",
        "algorithm_version": "2.1",
        "finding_code": "ICH",
        "status": InferenceStatus.SUCCEEDED,
        "score": 0.91,
        "threshold": 0.5,
        "result": InferenceResult.POSITIVE,
        "study_available_at_ms": T0,
        "started_at_ms": T0 + MIN,
        "completed_at_ms": T0 + 3 * MIN,
    }
    fields.update(kw)
    return InferenceEvent(**fields)


def alert(eid: str, t: int, state: AlertState, **kw: Any) -> AlertEvent:
    fields: dict[str, Any] = {
        "event_id": eid,
        "occurred_at_ms": t,
        "site_id": SITE,
        "study_uid": STUDY,
        "alert_id": "alert-1",
        "algorithm_name": "ich-detector",
        "algorithm_version": "2.1",
        "finding_code": "ICH",
        "state": state,
        "channel": AlertChannel.WORKLIST_FLAG,
        "recipient_id": "DR-WHO",
    }
    fields.update(kw)
    return AlertEvent(**fields)


def report(
    eid: str,
    t: int,
    status: ReportStatus = ReportStatus.FINAL,
    label: Label | None = Label.PRESENT,
    **kw: Any,
) -> ReportEvent:
    findings = (
        ()
        if label is None
        else (Finding(finding_code="ICH", label=label, label_method=LabelMethod.STRUCTURED),)
    )
    fields: dict[str, Any] = {
        "event_id": eid,
        "occurred_at_ms": t,
        "site_id": SITE,
        "study_uid": STUDY,
        "patient_id": "PAT-0001",
        "accession_number": "ACC-0001",
        "modality": "CT",
        "body_part": "HEAD",
        "report_id": "rep-1",
        "status": status,
        "interpreter_id": "RAD-7",
        "exam_completed_at_ms": T0 - MIN,
        "findings": findings,
    }
    fields.update(kw)
    return ReportEvent(**fields)


def run(
    events: list[Event], config: LineageConfig = CONFIG
) -> dict[tuple[str, str], LineageRecord]:
    """Applies the events in order; returns the latest record per (algorithm, finding)."""
    joiner = LineageJoiner(config)
    latest: dict[tuple[str, str], LineageRecord] = {}
    for event in events:
        for record in joiner.apply(event).records:
            latest[(record.algorithm_name, record.finding_code)] = record
    return latest


# --- outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "label", "outcome"),
    [
        (InferenceResult.POSITIVE, Label.PRESENT, Outcome.TRUE_POSITIVE),
        (InferenceResult.POSITIVE, Label.ABSENT, Outcome.FALSE_POSITIVE),
        (InferenceResult.NEGATIVE, Label.PRESENT, Outcome.FALSE_NEGATIVE),
        (InferenceResult.NEGATIVE, Label.ABSENT, Outcome.TRUE_NEGATIVE),
        (InferenceResult.INDETERMINATE, Label.PRESENT, Outcome.INDETERMINATE),
        (InferenceResult.NOT_APPLICABLE, Label.ABSENT, Outcome.INDETERMINATE),
        (InferenceResult.POSITIVE, Label.INDETERMINATE, Outcome.INDETERMINATE),
        (InferenceResult.NEGATIVE, None, Outcome.INDETERMINATE),
    ],
)
def test_outcome_compares_ai_result_with_report_label(
    result: InferenceResult, label: Label | None, outcome: Outcome
) -> None:
    record = run([inference(result=result), report("rep-e1", T0 + 60 * MIN, label=label)])[ICH]
    assert record.outcome is outcome
    assert record.completeness is Completeness.COMPLETE
    assert record.report_label is (ReportLabel.NONE if label is None else ReportLabel(label.value))


def test_failed_inference_is_ai_failed_with_or_without_report() -> None:
    failed = inference(
        status=InferenceStatus.TIMED_OUT,
        result=InferenceResult.NOT_APPLICABLE,
        failure_reason="gpu queue",
        score=None,
        completed_at_ms=None,
    )
    assert run([failed])[ICH].outcome is Outcome.AI_FAILED
    record = run([failed, report("rep-e1", T0 + 60 * MIN)])[ICH]
    assert record.outcome is Outcome.AI_FAILED
    assert record.failure_reason == "gpu queue"
    assert record.completeness is Completeness.COMPLETE


def test_awaiting_report_until_a_final_report() -> None:
    assert run([inference()])[ICH].outcome is Outcome.AWAITING_REPORT
    prelim = report("rep-e1", T0 + 30 * MIN, ReportStatus.PRELIMINARY)
    record = run([inference(), prelim])[ICH]
    assert record.outcome is Outcome.AWAITING_REPORT
    assert record.completeness is Completeness.OPEN
    assert record.report_prelim_at_ms == T0 + 30 * MIN
    assert record.report_label is ReportLabel.PRESENT  # labelled already, not yet final


def test_a_corrected_report_counts_as_final_when_the_final_is_missing() -> None:
    record = run([inference(), report("rep-e1", T0 + 60 * MIN, ReportStatus.CORRECTED)])[ICH]
    assert record.report_final_at_ms == T0 + 60 * MIN
    assert record.outcome is Outcome.TRUE_POSITIVE
    assert record.addendum_count == 0  # the first final is not its own addendum


def test_voided_report_gives_no_label() -> None:
    events: list[Event] = [
        inference(),
        report("rep-e1", T0 + 60 * MIN),
        report("rep-e2", T0 + 70 * MIN, ReportStatus.ENTERED_IN_ERROR, label=None),
    ]
    record = run(events)[ICH]
    assert record.report_status is ReportStatus.ENTERED_IN_ERROR
    assert record.report_label is ReportLabel.NONE
    assert record.outcome is Outcome.INDETERMINATE


# --- NO_AI_RESULT from eligibility ---------------------------------------------------


def test_final_report_without_inference_creates_no_ai_result_row() -> None:
    rows = run([report("rep-e1", T0 + 60 * MIN)])
    assert set(rows) == {ICH}
    record = rows[ICH]
    assert record.outcome is Outcome.NO_AI_RESULT
    assert record.completeness is Completeness.OPEN
    assert record.algorithm_version is None
    assert (record.modality, record.body_part) == ("CT", "HEAD")
    assert record.report_label is ReportLabel.PRESENT


@pytest.mark.parametrize(
    "event",
    [
        report("rep-e1", T0, modality="MR"),
        report("rep-e1", T0, body_part="CHEST"),
        report("rep-e1", T0, modality=None),
        report("rep-e1", T0, ReportStatus.PRELIMINARY),
    ],
)
def test_no_row_for_an_ineligible_or_non_final_report(event: ReportEvent) -> None:
    assert run([event]) == {}


def test_eligibility_matching_ignores_case_and_empty_body_parts_match_any() -> None:
    config = CONFIG.model_copy(
        update={
            "eligibility": (
                AlgorithmEligibility(algorithm_name="pe", finding_code="PE", modality="ct"),
            )
        }
    )
    assert run([report("rep-e1", T0, body_part=None)], config)[("pe", "PE")].outcome is (
        Outcome.NO_AI_RESULT
    )


def test_late_inference_turns_no_ai_result_into_a_classified_row() -> None:
    joiner = LineageJoiner(CONFIG)
    first = joiner.apply(report("rep-e1", T0 + 60 * MIN)).revisions
    later = joiner.apply(inference()).revisions
    assert [r.new.outcome for r in first] == [Outcome.NO_AI_RESULT]
    assert len(later) == 1
    assert later[0].old == first[0].new
    assert later[0].new.outcome is Outcome.TRUE_POSITIVE
    assert later[0].new.revision == 2


# --- derived fields ----------------------------------------------------------------------


def test_times_and_alert_fields() -> None:
    events: list[Event] = [
        inference(),
        alert("al-1", T0 + 4 * MIN, AlertState.RAISED, inference_event_id="inf-1"),
        alert("al-2", T0 + 5 * MIN, AlertState.DELIVERED),
        alert("al-3", T0 + 9 * MIN, AlertState.VIEWED, channel=AlertChannel.MOBILE_PUSH),
        alert("al-4", T0 + 12 * MIN, AlertState.ACKNOWLEDGED),
        report("rep-e1", T0 + 40 * MIN, critical_result_communicated_at_ms=T0 + 35 * MIN),
    ]
    record = run(events)[ICH]
    assert record.time_to_result_ms == 3 * MIN
    assert record.time_to_alert_ms == MIN  # completed -> raised
    assert record.alert_raised_at_ms == T0 + 4 * MIN
    assert record.alert_delivered_at_ms == T0 + 5 * MIN
    assert record.alert_first_response_at_ms == T0 + 9 * MIN
    assert record.time_to_response_ms == 5 * MIN
    assert record.alert_final_state is AlertState.ACKNOWLEDGED
    assert record.alert_channel is AlertChannel.WORKLIST_FLAG  # of the RAISED event
    assert record.interacted and not record.review_candidate
    assert not record.alert_dismissed and not record.alert_escalated
    assert record.report_tat_ms == 41 * MIN  # exam completed T0 - 1 min -> final
    assert record.critical_result_communicated_at_ms == T0 + 35 * MIN
    assert record.event_ids == ("al-1", "al-2", "al-3", "al-4", "inf-1", "rep-e1")
    assert record.updated_at_ms == T0 + 40 * MIN
    assert record.inference_event_id == "inf-1"


def test_alert_final_state_ties_break_by_lifecycle_precedence() -> None:
    events: list[Event] = [
        alert("al-b", T0, AlertState.DISMISSED, dismiss_reason="artefact"),
        alert("al-a", T0, AlertState.RAISED),
        alert("al-c", T0 - MIN, AlertState.ESCALATED),
    ]
    record = run(events)[ICH]
    assert record.alert_final_state is AlertState.DISMISSED
    assert record.alert_dismissed and record.alert_escalated
    assert record.time_to_response_ms == 0


def test_review_candidate_is_an_unanswered_false_positive() -> None:
    base: list[Event] = [inference(), report("rep-e1", T0 + 60 * MIN, label=Label.ABSENT)]
    assert run(base)[ICH].review_candidate
    raised = alert("al-1", T0 + 4 * MIN, AlertState.RAISED)
    assert run([*base, raised])[ICH].review_candidate  # raised is not a response
    viewed = alert("al-2", T0 + 6 * MIN, AlertState.VIEWED)
    assert not run([*base, raised, viewed])[ICH].review_candidate


def test_addenda_are_counted_after_the_first_final() -> None:
    events: list[Event] = [
        inference(),
        report("rep-e1", T0 + 60 * MIN),
        report(
            "rep-e2",
            T0 + 90 * MIN,
            ReportStatus.APPENDED,
            label=None,
            report_id="rep-2",
            parent_report_id="rep-1",
        ),
        report("rep-e3", T0 + 120 * MIN, ReportStatus.CORRECTED, label=Label.ABSENT),
        report("rep-e0", T0 + 30 * MIN, ReportStatus.PRELIMINARY),
    ]
    record = run(events)[ICH]
    assert record.addendum_count == 2
    assert record.report_id == "rep-1"  # the first final's report
    assert record.report_status is ReportStatus.CORRECTED
    assert record.report_final_at_ms == T0 + 60 * MIN
    assert record.report_label is ReportLabel.ABSENT  # the latest labelled event
    assert record.label_method is LabelMethod.STRUCTURED
    assert record.outcome is Outcome.FALSE_POSITIVE


def test_rerun_choice_prefers_success_then_latest_completion() -> None:
    failed = inference("inf-1", status=InferenceStatus.FAILED, completed_at_ms=T0 + 9 * MIN)
    early = inference("inf-2", result=InferenceResult.NEGATIVE, completed_at_ms=T0 + 4 * MIN)
    late = inference("inf-3", completed_at_ms=T0 + 5 * MIN, algorithm_version="2.2")
    record = run([failed, late, early])[ICH]
    assert record.inference_event_id == "inf-3"
    assert record.algorithm_version == "2.2"
    assert record.event_ids == ("inf-1", "inf-2", "inf-3")


def test_rerun_choice_prefers_the_inference_an_alert_refers_to() -> None:
    early = inference("inf-2", completed_at_ms=T0 + 4 * MIN)
    late = inference("inf-3", result=InferenceResult.NEGATIVE, completed_at_ms=T0 + 5 * MIN)
    raised = alert("al-1", T0 + 6 * MIN, AlertState.RAISED, inference_event_id="inf-2")
    assert run([early, late])[ICH].inference_event_id == "inf-3"
    assert run([early, late, raised])[ICH].inference_event_id == "inf-2"


def test_alert_without_inference_names_its_inference_and_version() -> None:
    record = run([alert("al-1", T0, AlertState.RAISED, inference_event_id="inf-9")])[ICH]
    assert record.inference_event_id == "inf-9"
    assert record.inference_status is None
    assert record.algorithm_version == "2.1"
    assert record.outcome is Outcome.AWAITING_REPORT


# --- rows, revisions, duplicates -----------------------------------------------------------


def test_report_applies_to_every_row_and_alerts_to_their_own() -> None:
    joiner = LineageJoiner(CONFIG)
    joiner.apply(inference())
    pe = inference(
        "inf-pe", algorithm_name="pe-detector", finding_code="PE", result=InferenceResult.NEGATIVE
    )
    joiner.apply(pe)
    raised = joiner.apply(alert("al-1", T0 + 4 * MIN, AlertState.RAISED))
    assert [(r.new.algorithm_name, r.new.revision) for r in raised.revisions] == [
        ("ich-detector", 2)
    ]
    findings = (
        Finding(finding_code="ICH", label=Label.PRESENT, label_method=LabelMethod.NLP),
        Finding(finding_code="PE", label=Label.ABSENT, label_method=LabelMethod.NLP),
    )
    out = joiner.apply(report("rep-e1", T0 + 60 * MIN, findings=findings))
    outcomes = {r.new.finding_code: r.new.outcome for r in out.revisions}
    assert outcomes == {"ICH": Outcome.TRUE_POSITIVE, "PE": Outcome.TRUE_NEGATIVE}


def test_duplicate_event_changes_nothing_and_emits_nothing() -> None:
    store = MappingStudyStore({})
    joiner = LineageJoiner(CONFIG, store)
    first = joiner.apply(inference())
    before = dict(store._mapping)
    again = joiner.apply(inference(score=0.1))  # same event_id: ignored even if it differs
    assert first and not again and again == JoinOutput()
    assert dict(store._mapping) == before


def test_revisions_are_numbered_and_chained() -> None:
    joiner = LineageJoiner(CONFIG)
    emitted = []
    for event in [
        inference(),
        alert("al-1", T0 + 4 * MIN, AlertState.RAISED),
        report("rep-e1", T0 + 60 * MIN),
    ]:
        emitted.extend(joiner.apply(event).revisions)
    assert [r.new.revision for r in emitted] == [1, 2, 3]
    assert emitted[0].old is None and emitted[0].new.prev_hash is None
    for before, after in itertools.pairwise(emitted):
        assert after.old == before.new
        assert after.new.prev_hash == before.new.record_hash
    records = [r.new for r in emitted]
    assert all(r.record_hash == record_hash(r) for r in records)
    assert verify_chain(records) == []
    assert list(joiner.current_records()) == [records[-1]]


def test_record_content_covers_every_lineage_field() -> None:
    content = set(RecordContent.__annotations__)
    assert content | CHAIN_FIELDS == set(LineageRecord.model_fields)
    assert not content & CHAIN_FIELDS


def test_built_records_validate() -> None:
    record = run([inference(), alert("al-1", T0, AlertState.RAISED), report("rep-e1", T0)])[ICH]
    assert LineageRecord.model_validate(record.model_dump()) == record


# --- privacy -----------------------------------------------------------------------------


def test_identifiers_become_keyed_refs_and_never_reach_outputs() -> None:
    joiner = LineageJoiner(CONFIG, MappingStudyStore(raw := {}))
    records = []
    for event in [inference(), alert("al-1", T0, AlertState.VIEWED), report("rep-e1", T0)]:
        records.extend(joiner.apply(event).records)
    pseudonymiser = Pseudonymiser(CONFIG.pseudonym_key.get_secret_value())
    assert records[-1].patient_ref == pseudonymiser.ref(IdentifierKind.PATIENT, "PAT-0001")
    assert records[-1].accession_ref == pseudonymiser.ref(IdentifierKind.ACCESSION, "ACC-0001")
    visible = [r.model_dump_json() for r in records] + [repr(r) for r in records]
    visible += [v.decode() for v in raw.values()] + [repr(s) for _, s in joiner.store.items()]
    for identifier in ("PAT-0001", "ACC-0001", "DR-WHO", "RAD-7"):
        assert not any(identifier in text for text in visible)


def test_study_uid_pseudonymised_by_setting() -> None:
    config = CONFIG.model_copy(update={"pseudonymise_study_uid": True})
    joiner = LineageJoiner(config, MappingStudyStore(raw := {}))
    record = joiner.apply(inference()).records[0]
    assert record.study_uid != STUDY and len(record.study_uid) == 64
    assert not any(STUDY in k for k in raw)
    assert joiner.apply(report("rep-e1", T0)).records[0].study_uid == record.study_uid


# --- batches -----------------------------------------------------------------------------


def test_a_batch_emits_one_revision_per_changed_row_with_the_same_final_content() -> None:
    events: list[Event] = [
        inference(),
        alert("al-1", T0 + 4 * MIN, AlertState.RAISED),
        alert("al-2", T0 + 9 * MIN, AlertState.VIEWED),
        inference("inf-pe", algorithm_name="pe-detector", finding_code="PE"),
    ]
    one_by_one = run(events)
    joiner = LineageJoiner(CONFIG)
    batched = joiner.apply_many([events[0]]).records
    out = joiner.apply_many([*events[1:], events[1], report("rep-e1", T0 + 60 * MIN)])
    assert [(r.new.finding_code, r.new.revision) for r in out.revisions] == [("ICH", 2), ("PE", 1)]
    assert out.revisions[0].old == batched[0]
    last = {(r.algorithm_name, r.finding_code): r for r in out.records}
    expected = run([*events, report("rep-e1", T0 + 60 * MIN)])
    for key in last:
        assert last[key].model_dump(exclude={"revision", "prev_hash", "record_hash"}) == (
            expected[key].model_dump(exclude={"revision", "prev_hash", "record_hash"})
        )
    assert set(one_by_one) == {ICH, ("pe-detector", "PE")}
    assert verify_chain([*batched, *out.records]) == []


def test_fast_built_records_equal_validated_ones() -> None:
    record = run([inference(), alert("al-1", T0, AlertState.RAISED), report("rep-e1", T0)])[ICH]
    validated = LineageRecord.model_validate(record.model_dump())
    assert record == validated
    assert record.model_fields_set == validated.model_fields_set
    assert record.model_dump_json() == validated.model_dump_json()
    assert hash(record) == hash(validated)
    assert record.model_copy(update={"score": 0.5}).score == 0.5
