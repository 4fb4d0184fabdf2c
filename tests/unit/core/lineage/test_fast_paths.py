"""The join's fast paths give what the plain ones would (DESIGN §10 without changing §4).

Each shortcut taken for speed is checked here against the straightforward computation:
records built without validation against validated ones, the joiner's canonical JSON
against ``json.dumps``, a batch folded into one draft against one event at a time, the
rows a batch re-derives against all rows, and the memos against no memo.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from enum import Enum
from typing import Any

import pytest
from hypothesis import given, settings
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
from schemas.records import Completeness, LineageRecord, Outcome, ReportLabel
from streams.core.lineage import pseudonym
from streams.core.lineage.fold import StudyFolder, fold_event
from streams.core.lineage.hashchain import canonical_json, hash_fields, record_hash
from streams.core.lineage.join import LineageJoiner
from streams.core.lineage.outcome import RecordContent, derive_contents
from streams.core.lineage.output import build_record
from streams.core.lineage.pseudonym import IdentifierKind, Pseudonymiser
from streams.core.lineage.state import (
    AlertFact,
    FindingFact,
    InferenceFact,
    ReportFact,
    RowMeta,
    RowState,
    StudyState,
)
from tests.unit.core.lineage.test_join import (
    CONFIG,
    ICH,
    MIN,
    SITE,
    STUDY,
    T0,
    alert,
    inference,
    report,
)
from tests.unit.core.lineage.test_properties import SETTINGS, reordered

PE = ("pe-detector", "PE")


def _joined(events: list[Event]) -> tuple[LineageJoiner, list[LineageRecord]]:
    joiner = LineageJoiner(CONFIG)
    return joiner, [r for e in events for r in joiner.apply(e).records]


def _full_study() -> list[Event]:
    return [
        inference(),
        alert("al-1", T0 + 4 * MIN, AlertState.RAISED),
        alert("al-2", T0 + 9 * MIN, AlertState.DISMISSED),
        inference("inf-pe", algorithm_name="pe-detector", finding_code="PE", score=None),
        report("rep-e1", T0 + 60 * MIN, label=Label.ABSENT),
    ]


# --- records built without validation ---------------------------------------------------


def test_built_records_equal_model_construct_and_validated_records_field_by_field() -> None:
    _, records = _joined(_full_study())
    for record in records:
        validated = LineageRecord.model_validate(record.model_dump())
        constructed = LineageRecord.model_construct(**record.model_dump())
        assert record == validated == constructed
        assert list(record.__dict__) == list(LineageRecord.model_fields)
        for name in LineageRecord.model_fields:
            value = getattr(record, name)
            # Enum fields hold the members, ints are not bools, tuples stay tuples.
            assert type(value) is type(getattr(validated, name)), name
        assert record.model_dump_json() == validated.model_dump_json()


def test_enum_fields_hold_enum_members() -> None:
    _, records = _joined(_full_study())
    record = [r for r in records if (r.algorithm_name, r.finding_code) == ICH][-1]
    assert type(record.outcome) is Outcome and type(record.completeness) is Completeness
    assert type(record.inference_status) is InferenceStatus
    assert type(record.ai_result) is InferenceResult
    assert type(record.alert_final_state) is AlertState
    assert type(record.alert_channel) is AlertChannel
    assert type(record.report_status) is ReportStatus
    assert type(record.report_label) is ReportLabel
    assert type(record.label_method) is LabelMethod


def test_records_share_their_fields_set_safely() -> None:
    _, records = _joined(_full_study())
    first, last = records[0], records[-1]
    changed = first.model_copy(update={"score": 0.5})
    assert changed.score == 0.5 and first.score == 0.91
    assert last.model_fields_set == set(LineageRecord.model_fields)
    assert first.model_fields_set == set(LineageRecord.model_fields)


def test_derived_content_comes_in_record_content_order() -> None:
    joiner, _ = _joined(_full_study())
    state = joiner.store.get((SITE, STUDY))
    assert state is not None
    for content in derive_contents(SITE, STUDY, state).values():
        assert list(content) == list(RecordContent.__annotations__)


def test_build_record_takes_any_content_order() -> None:
    joiner, records = _joined(_full_study())
    state = joiner.store.get((SITE, STUDY))
    assert state is not None
    content = derive_contents(SITE, STUDY, state, rows=[ICH])[ICH]
    shuffled: Any = dict(reversed(list(content.items())))
    meta = state.rows[ICH].emitted
    assert meta is not None
    expected = [r for r in records if (r.algorithm_name, r.finding_code) == ICH][-1]
    assert build_record(shuffled, meta) == expected


# --- the joiner's canonical JSON --------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\x00\x1f"\\\u2028é,:[]{}'))
_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e-05, 1e16, 0.1, 5e-324])
    | _TEXT
    | st.sampled_from(list(Outcome) + list(AlertState) + list(ReportLabel))
)
_FIELDS = [name for name in LineageRecord.model_fields if name != "record_hash"]


@st.composite
def record_like_fields(draw: st.DrawFn) -> dict[str, object]:
    fields: dict[str, object] = {name: draw(_SCALAR) for name in _FIELDS}
    fields["event_ids"] = tuple(draw(st.lists(_TEXT, max_size=5)))
    if draw(st.booleans()):  # a value the fast path does not expect
        name = draw(st.sampled_from(_FIELDS))
        fields[name] = draw(
            st.lists(_SCALAR, max_size=3) | st.dictionaries(_TEXT, _SCALAR, max_size=3)
        )
    return fields


def _reference_hash(fields: dict[str, object]) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@settings(max_examples=300, deadline=None)
@given(record_like_fields())
def test_hash_fields_equals_the_hash_of_canonical_json(fields: dict[str, object]) -> None:
    shuffled = dict(reversed(list(fields.items())))
    assert hash_fields(fields) == hash_fields(shuffled) == _reference_hash(fields)
    assert canonical_json(fields).decode() == json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.pop("score"),
        lambda f: f.update({"extra": 1}),
        lambda f: f.update({"score": math.nan}),
        lambda f: f.update({"event_ids": ["b", "a"], "modality": ["x", "y"]}),
    ],
)
def test_hash_fields_of_other_mappings_is_still_canonical(change: Any) -> None:
    _, records = _joined(_full_study())
    fields = records[-1].model_dump(exclude={"record_hash"})
    change(fields)
    assert hash_fields(fields) == _reference_hash(fields)


def test_joiner_hashes_verify_with_record_hash() -> None:
    _, records = _joined(_full_study())
    assert all(r.record_hash == record_hash(r) for r in records)


# --- a batch folded into one draft ------------------------------------------------------


def _reference_fold(state: StudyState, event: Event, p: Pseudonymiser) -> StudyState:
    """The join's fold as first written: a new immutable state per event."""
    rows = dict(state.rows)
    reports = state.reports
    patient_ref, accession_ref = state.patient_ref, state.accession_ref

    def least(current: str | None, value: str | None, kind: IdentifierKind) -> str | None:
        ref = None if value is None else p.ref(kind, value)
        return current if ref is None or (current is not None and current <= ref) else ref

    if isinstance(event, InferenceEvent | ReportEvent):
        patient_ref = least(patient_ref, event.patient_id, IdentifierKind.PATIENT)
        accession_ref = least(accession_ref, event.accession_number, IdentifierKind.ACCESSION)
    if isinstance(event, InferenceEvent):
        row = rows.get((event.algorithm_name, event.finding_code), RowState())
        fact = InferenceFact(
            event.event_id, event.occurred_at_ms, event.algorithm_version, event.modality,
            event.body_part, event.manufacturer, event.status, event.failure_reason,
            event.score, event.threshold, event.result, event.study_available_at_ms,
            event.completed_at_ms,
        )  # fmt: skip
        rows[(event.algorithm_name, event.finding_code)] = row._replace(
            inferences=(*row.inferences, fact)
        )
    elif isinstance(event, AlertEvent):
        row = rows.get((event.algorithm_name, event.finding_code), RowState())
        ids = set(row.alert_inference_ids) | (
            set() if event.inference_event_id is None else {event.inference_event_id}
        )
        rows[(event.algorithm_name, event.finding_code)] = row._replace(
            alerts=(
                *row.alerts,
                AlertFact(event.event_id, event.occurred_at_ms, event.state, event.channel),
            ),
            alert_versions=tuple(sorted({*row.alert_versions, event.algorithm_version})),
            alert_inference_ids=tuple(sorted(ids)),
        )
    else:
        findings = tuple(
            FindingFact(f.finding_code, f.label, f.label_method) for f in event.findings
        )
        reports = (
            *reports,
            ReportFact(
                event.event_id, event.occurred_at_ms, event.status, event.report_id,
                event.exam_completed_at_ms, event.critical_result_communicated_at_ms,
                event.modality, event.body_part, findings,
            ),
        )  # fmt: skip
        if event.status in (ReportStatus.FINAL, ReportStatus.CORRECTED, ReportStatus.AMENDED):
            for e in CONFIG.eligible_algorithms(event.modality, event.body_part):
                row = rows.get((e.algorithm_name, e.finding_code), RowState())
                rows[(e.algorithm_name, e.finding_code)] = row._replace(eligible=True)
    return StudyState(
        max(state.last_event_ms, event.occurred_at_ms), patient_ref, accession_ref, reports, rows
    )


@SETTINGS
@given(reordered())
def test_a_draft_of_many_events_equals_folding_them_one_by_one(
    case: tuple[list[Event], list[Event]],
) -> None:
    originals, _ = case
    pseudonymiser = Pseudonymiser(CONFIG.pseudonym_key.get_secret_value())
    folder = StudyFolder(pseudonymiser, CONFIG)
    by_study: dict[tuple[str, str], list[Event]] = {}
    for event in originals:
        by_study.setdefault((event.site_id, event.study_uid), []).append(event)
    for events in by_study.values():
        one_by_one = StudyState(last_event_ms=events[0].occurred_at_ms)
        for event in events:
            one_by_one = _reference_fold(one_by_one, event, pseudonymiser)
        draft = folder.begin(None, events[0].occurred_at_ms)
        for event in events:
            draft.add(event)
        batched = draft.build({})
        assert batched == one_by_one
        assert batched.event_ids == one_by_one.event_ids
        stepwise = StudyState(last_event_ms=events[0].occurred_at_ms)
        for event in events:
            stepwise = fold_event(stepwise, event, pseudonymiser, CONFIG)
        assert stepwise == one_by_one


def test_changed_rows_are_the_rows_of_the_events_unless_a_report_or_pseudonym_changes() -> None:
    joiner, _ = _joined(
        [inference(), inference("inf-pe", algorithm_name="pe-detector", finding_code="PE")]
    )
    state = joiner.store.get((SITE, STUDY))
    folder = StudyFolder(Pseudonymiser(CONFIG.pseudonym_key.get_secret_value()), CONFIG)

    draft = folder.begin(state, T0)
    draft.add(alert("al-1", T0 + 4 * MIN, AlertState.RAISED))
    assert draft.changed_rows() == [ICH]

    draft = folder.begin(state, T0)
    draft.add(inference("inf-2", algorithm_name="pe-detector", finding_code="PE"))
    assert draft.changed_rows() == [PE]  # the same patient and accession: no new least

    assert state is not None and state.patient_ref is not None
    refs = {
        f"PAT-{i}": folder.pseudonymiser.ref(IdentifierKind.PATIENT, f"PAT-{i}") for i in range(40)
    }
    lower = next(p for p, ref in refs.items() if ref < state.patient_ref)
    higher = next(p for p, ref in refs.items() if ref > state.patient_ref)
    draft = folder.begin(state, T0)
    draft.add(inference("inf-3", patient_id=higher))
    assert draft.changed_rows() == [ICH]
    draft = folder.begin(state, T0)
    draft.add(inference("inf-3", patient_id=lower))
    assert draft.changed_rows() is None  # a new least patient_ref applies to every row

    draft = folder.begin(state, T0)
    draft.add(report("rep-e1", T0 + 60 * MIN))
    assert draft.changed_rows() is None


def test_rows_a_batch_does_not_touch_are_not_revised() -> None:
    joiner = LineageJoiner(CONFIG)
    joiner.apply_many(
        [inference(), inference("inf-pe", algorithm_name="pe-detector", finding_code="PE")]
    )
    out = joiner.apply_many([alert("al-1", T0 + 4 * MIN, AlertState.RAISED)])
    assert [(r.new.finding_code, r.new.revision) for r in out.revisions] == [("ICH", 2)]


# --- memos ------------------------------------------------------------------------------


def test_pseudonym_memo_is_bounded_and_gives_the_plain_hmac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pseudonym, "_MEMO_SIZE", 4)
    key = b"k" * 32
    p = Pseudonymiser(key)
    for round_ in range(3):
        for i in range(10):
            value = f"PAT-{i}"
            expected = hmac.new(key, b"patient_id\x00" + value.encode(), hashlib.sha256)
            assert p.ref(IdentifierKind.PATIENT, value) == expected.hexdigest(), round_
    assert all(len(memo) <= 4 for memo in p._memo.values())
    assert "PAT-" not in repr(p)


def test_equal_report_findings_share_their_facts() -> None:
    folder = StudyFolder(Pseudonymiser(CONFIG.pseudonym_key.get_secret_value()), CONFIG)
    findings = (Finding(finding_code="ICH", label=Label.ABSENT, label_method=LabelMethod.NLP),)
    again = (Finding(finding_code="ICH", label=Label.ABSENT, label_method=LabelMethod.NLP),)
    assert folder.finding_facts(findings) is folder.finding_facts(again)
    assert folder.finding_facts(()) == ()


def test_row_meta_round_trips_through_the_state() -> None:
    joiner, records = _joined(_full_study())
    state = joiner.store.get((SITE, STUDY))
    assert state is not None
    last = {(r.algorithm_name, r.finding_code): r for r in records}
    for key, row in state.rows.items():
        assert row.emitted == RowMeta(
            last[key].revision, last[key].prev_hash, last[key].record_hash
        )


def test_enum_members_keep_their_identity_in_facts() -> None:
    joiner, _ = _joined(_full_study())
    state = joiner.store.get((SITE, STUDY))
    assert state is not None
    for fact in state.rows[ICH].alerts:
        assert isinstance(fact.state, Enum) and isinstance(fact.channel, Enum)
