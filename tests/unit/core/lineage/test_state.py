"""Study state: encoding round trip, size budget (DESIGN §10), store contract."""

from __future__ import annotations

import uuid
from collections.abc import Callable

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
from streams.core.lineage.codec import ENUM_CODES, decode_state, encode_state
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.join import LineageJoiner
from streams.core.lineage.state import StudyKey, StudyState, StudyStateError
from streams.core.lineage.store import InMemoryStudyStore, MappingStudyStore, StudyStore

T0 = 1_700_000_000_000
MIN = 60_000
STUDY_UID = "1.2.826.0.1.3680043.8.498.10349275613297105871648205736219"
KEY = ("site-north-general", STUDY_UID)
CONFIG = LineageConfig(demo=True)
STATE_BUDGET_BYTES = 1024  # DESIGN §10


def _eid() -> str:
    return str(uuid.UUID(int=uuid.uuid4().int))


def typical_open_study(algorithms: tuple[tuple[str, str], ...]) -> list[Event]:
    """Events of a study read by AI, alerted and viewed, with a preliminary report only."""
    common = {"site_id": KEY[0], "study_uid": STUDY_UID}
    events: list[Event] = []
    for name, finding in algorithms:
        inference_id = _eid()
        events.append(
            InferenceEvent(
                event_id=inference_id,
                occurred_at_ms=T0 + 3 * MIN,
                **common,
                accession_number="ACC20231114-0042",
                patient_id="MRN-00912345",
                modality="CT",
                body_part="HEAD",
                manufacturer="SIEMENS",
                algorithm_name=name,
                algorithm_version="3.2.1",
                finding_code=finding,
                status=InferenceStatus.SUCCEEDED,
                score=0.9137,
                threshold=0.5,
                result=InferenceResult.POSITIVE,
                study_available_at_ms=T0,
                started_at_ms=T0 + MIN,
                completed_at_ms=T0 + 3 * MIN,
            )
        )
        for minutes, state in (
            (4, AlertState.RAISED),
            (5, AlertState.DELIVERED),
            (9, AlertState.VIEWED),
        ):
            events.append(
                AlertEvent(
                    event_id=_eid(),
                    occurred_at_ms=T0 + minutes * MIN,
                    **common,
                    alert_id=_eid(),
                    inference_event_id=inference_id,
                    algorithm_name=name,
                    algorithm_version="3.2.1",
                    finding_code=finding,
                    state=state,
                    channel=AlertChannel.WORKLIST_FLAG,
                    recipient_role="radiologist",
                    recipient_id="RAD-0042",
                )
            )
    events.append(
        ReportEvent(
            event_id=_eid(),
            occurred_at_ms=T0 + 30 * MIN,
            **common,
            accession_number="ACC20231114-0042",
            patient_id="MRN-00912345",
            modality="CT",
            body_part="HEAD",
            procedure_code="CTHEADWO",
            report_id="RPT-2023-00987654",
            status=ReportStatus.PRELIMINARY,
            interpreter_id="RAD-0042",
            exam_completed_at_ms=T0 - 2 * MIN,
            findings=tuple(
                Finding(finding_code=f, label=Label.PRESENT, label_method=LabelMethod.NLP)
                for _, f in algorithms
            ),
        )
    )
    return events


def state_after(events: list[Event]) -> StudyState:
    store = InMemoryStudyStore()
    joiner = LineageJoiner(CONFIG, store)
    for event in events:
        joiner.apply(event)
    state = store.get(KEY)
    assert state is not None
    return state


def stored_bytes(state: StudyState) -> int:
    return len(MappingStudyStore.encode_key(KEY).encode()) + len(encode_state(state))


@pytest.mark.parametrize(
    ("algorithms", "budget"),
    [
        ((("ich-detector", "ICH"),), STATE_BUDGET_BYTES),
        # Two algorithms on one study is less common; it must still fit comfortably.
        ((("ich-detector", "ICH"), ("lvo-detector", "LVO")), 2 * STATE_BUDGET_BYTES),
    ],
)
def test_typical_open_study_fits_the_state_budget(
    algorithms: tuple[tuple[str, str], ...], budget: int
) -> None:
    state = state_after(typical_open_study(algorithms))
    size = stored_bytes(state)
    print(f"{len(algorithms)} algorithm(s), {state.event_count()} events: {size} bytes")
    assert size <= budget


def test_encoding_round_trips() -> None:
    events = typical_open_study((("ich-detector", "ICH"), ("pe-detector", "PE")))
    state = state_after(events)
    assert decode_state(encode_state(state)) == state
    tombstone = StudyState(last_event_ms=T0, evicted_at_ms=T0 + 5)
    assert decode_state(encode_state(tombstone)) == tombstone
    assert len(encode_state(tombstone)) <= 40


def test_state_holds_pseudonyms_not_identifiers() -> None:
    state = state_after(typical_open_study((("ich-detector", "ICH"),)))
    text = encode_state(state).decode() + repr(state)
    for identifier in ("MRN-00912345", "ACC20231114-0042", "RAD-0042"):
        assert identifier not in text
    assert STUDY_UID not in repr(state)


def test_every_enum_member_has_a_compact_code() -> None:
    for enum, values in ENUM_CODES.items():
        assert set(values) == {member.value for member in enum}, enum.__name__


def test_event_ids_survive_packing() -> None:
    ids = (str(uuid.uuid4()), "~x", "~~", "~" + "A" * 22, str(uuid.uuid4()).upper(), "", "e1")
    events = typical_open_study((("ich-detector", "ICH"),))
    state = state_after(events)
    (row_key, row), *_ = state.rows.items()
    alerts = tuple(
        type(alert)(eid, alert.occurred_at_ms, alert.state, alert.channel)
        for eid, alert in zip(ids, row.alerts * 3, strict=False)
    )
    changed = StudyState(
        last_event_ms=state.last_event_ms,
        rows={row_key: type(row)(alerts=alerts, alert_inference_ids=("x", ids[0]))},
    )
    assert decode_state(encode_state(changed)) == changed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"[2]",
        b'[1,"x"]',
        b"[1,5,[[1]]]",
        b"\xff",
        b'[1,0,null,null,[["e"]]]',
        b'[1,0,null,[["a","b",null,null,null,0]]]',
        b'[1,0,null,null,[["e",0,-1,"r"]]]',
    ],
)
def test_undecodable_state_raises_without_content(data: bytes) -> None:
    with pytest.raises(StudyStateError) as caught:
        decode_state(data)
    assert "e" not in str(caught.value).split()


# --- the store contract, run against every implementation ---------------------------------

STORES: dict[str, Callable[[], StudyStore]] = {
    "in-memory": InMemoryStudyStore,
    "mapping": lambda: MappingStudyStore({}),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest) -> StudyStore:
    return STORES[request.param]()


def test_store_get_put_delete_items(store: StudyStore) -> None:
    key_a: StudyKey = ("site", "a")
    key_b: StudyKey = ("site", 'b"[,]')  # keys survive any characters
    state_a = StudyState(last_event_ms=T0)
    state_b = state_after(typical_open_study((("ich-detector", "ICH"),)))
    assert store.get(key_a) is None
    store.put(key_a, state_a)
    store.put(key_b, state_b)
    assert store.get(key_a) == state_a and store.get(key_b) == state_b
    assert dict(store.items()) == {key_a: state_a, key_b: state_b}
    store.put(key_a, state_b)
    assert store.get(key_a) == state_b
    for key, _ in store.items():  # deleting while iterating is allowed
        store.delete(key)
    store.delete(key_a)  # absent: no error
    assert store.get(key_a) is None and list(store.items()) == []
