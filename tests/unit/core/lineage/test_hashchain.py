"""The lineage hash chain: computed by the joiner, verified by verify_chain (DESIGN §8)."""

from __future__ import annotations

import hashlib
import json

from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Event,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
)
from schemas.records import LineageRecord
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.hashchain import (
    ChainProblemKind,
    canonical_json,
    content_hash,
    record_hash,
    verify_chain,
)
from streams.core.lineage.join import LineageJoiner

T0 = 1_700_000_000_000
CONFIG = LineageConfig(demo=True)


def _events(study: str) -> list[Event]:
    events: list[Event] = [
        InferenceEvent(
            event_id=f"{study}-inf",
            occurred_at_ms=T0,
            site_id="site-a",
            study_uid=study,
            modality="CT",
            algorithm_name="ich-detector",
            algorithm_version="1",
            finding_code="ICH",
            status=InferenceStatus.SUCCEEDED,
            score=0.7,
            result=InferenceResult.POSITIVE,
        )
    ]
    for i, state in enumerate((AlertState.RAISED, AlertState.VIEWED, AlertState.ACCEPTED)):
        events.append(
            AlertEvent(
                event_id=f"{study}-al{i}",
                occurred_at_ms=T0 + i + 1,
                site_id="site-a",
                study_uid=study,
                alert_id="a",
                algorithm_name="ich-detector",
                algorithm_version="1",
                finding_code="ICH",
                state=state,
                channel=AlertChannel.DESKTOP_WIDGET,
            )
        )
    return events


def chain(study: str = "s1") -> list[LineageRecord]:
    joiner = LineageJoiner(CONFIG)
    return [r for e in _events(study) for r in joiner.apply(e).records]


def test_record_hash_is_sha256_of_canonical_json_without_itself() -> None:
    record = chain()[1]
    fields = record.model_dump(mode="json", exclude={"record_hash"})
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.record_hash == hashlib.sha256(text.encode()).hexdigest() == record_hash(record)
    assert canonical_json(fields) == text.encode()


def test_a_joiner_chain_verifies_in_any_order_and_with_redeliveries() -> None:
    records = chain("s1") + chain("s2")
    assert [r.revision for r in records[:4]] == [1, 2, 3, 4]
    assert verify_chain(reversed(records + records[:2])) == []


def test_altered_row_is_found() -> None:
    records = chain()
    records[2] = records[2].model_copy(update={"alert_final_state": AlertState.DISMISSED})
    (problem,) = verify_chain(records)
    assert (problem.kind, problem.revision) == (ChainProblemKind.ALTERED, 3)
    assert problem.key == ("site-a", "s1", "ich-detector", "ICH")


def test_altered_row_with_recomputed_hash_breaks_the_next_link() -> None:
    records = chain()
    forged = records[1].model_copy(update={"score": 0.1})
    records[1] = forged.model_copy(update={"record_hash": record_hash(forged)})
    problems = verify_chain(records)
    assert [(p.kind, p.revision) for p in problems] == [(ChainProblemKind.BROKEN_LINK, 3)]


def test_removed_revision_is_found() -> None:
    records = chain()
    del records[1]
    problems = verify_chain(records)
    assert [(p.kind, p.revision) for p in problems] == [(ChainProblemKind.MISSING_REVISION, 3)]
    assert "revision 2 missing" in problems[0].detail
    assert verify_chain(chain()[1:])[0].kind is ChainProblemKind.MISSING_REVISION


def test_relinked_first_revision_and_conflicting_rows_are_found() -> None:
    records = chain()
    first = records[0].model_copy(update={"prev_hash": "0" * 64})
    records[0] = first.model_copy(update={"record_hash": record_hash(first)})
    kinds = {p.kind for p in verify_chain(records)}
    assert ChainProblemKind.BROKEN_LINK in kinds
    other = chain()[1].model_copy(update={"score": 0.2})
    conflicting = [*chain(), other.model_copy(update={"record_hash": record_hash(other)})]
    assert [p.kind for p in verify_chain(conflicting)] == [ChainProblemKind.CONFLICTING_REVISION]


def test_content_hash_ignores_the_revision_history() -> None:
    record = chain()[-1]
    renumbered = record.model_copy(update={"revision": 9, "prev_hash": None, "record_hash": "x"})
    assert content_hash(renumbered) == content_hash(record)
    assert content_hash(record.model_copy(update={"score": 0.5})) != content_hash(record)
