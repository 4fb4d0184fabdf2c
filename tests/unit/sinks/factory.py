"""Output records for sink tests and benchmarks: plausible, deterministic, chained.

Used by the unit tests, the ClickHouse integration tests and
``tests/benchmarks/bench_sinks.py``. Lineage revisions carry a valid hash chain so
``verify_chain`` accepts what a sink stored and read back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Finding,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportEvent,
    ReportStatus,
)
from schemas.records import (
    Breach,
    BreachState,
    Completeness,
    DeadLetter,
    DeadLetterReason,
    Header,
    KpiValue,
    LineageRecord,
    Outcome,
    ReportLabel,
    ReviewCandidate,
    Severity,
)
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.core.lineage.hashchain import record_hash

T0 = 1_700_000_000_000

_OUTCOMES = (
    (InferenceResult.POSITIVE, ReportLabel.PRESENT, Outcome.TRUE_POSITIVE),
    (InferenceResult.POSITIVE, ReportLabel.ABSENT, Outcome.FALSE_POSITIVE),
    (InferenceResult.NEGATIVE, ReportLabel.PRESENT, Outcome.FALSE_NEGATIVE),
    (InferenceResult.NEGATIVE, ReportLabel.ABSENT, Outcome.TRUE_NEGATIVE),
    (InferenceResult.NEGATIVE, ReportLabel.ABSENT, Outcome.TRUE_NEGATIVE),
    (InferenceResult.NEGATIVE, ReportLabel.ABSENT, Outcome.TRUE_NEGATIVE),
)


def lineage_chain(
    site_id: str, study_uid: str, index: int, rng: random.Random, revisions: int = 2
) -> list[LineageRecord]:
    """Returns ``revisions`` chained revisions of one lineage key: open, then complete."""
    ai_result, label, outcome = _OUTCOMES[index % len(_OUTCOMES)]
    available = T0 + index * MINUTE_MS
    completed = available + rng.randint(20_000, 300_000)
    raised = completed + 5_000 if ai_result is InferenceResult.POSITIVE else None
    responded = raised + rng.randint(10_000, 1_800_000) if raised is not None else None
    common = {
        "site_id": site_id,
        "study_uid": study_uid,
        "algorithm_name": "ich-detector",
        "finding_code": "ICH",
        "algorithm_version": "2.1.0" if index % 3 else "2.0.4",
        "modality": "CT",
        "body_part": "HEAD",
        "manufacturer": "ACME",
        "patient_ref": f"{index:064x}",
        "accession_ref": f"{index + 1:064x}",
        "inference_event_id": f"inf-{site_id}-{index}",
        "inference_status": InferenceStatus.SUCCEEDED,
        "score": round(rng.random(), 6),
        "threshold": 0.5,
        "ai_result": ai_result,
        "study_available_at_ms": available,
        "inference_completed_at_ms": completed,
        "alert_raised_at_ms": raised,
        "alert_first_response_at_ms": responded,
        "alert_final_state": AlertState.ACKNOWLEDGED if raised is not None else None,
        "alert_channel": AlertChannel.WORKLIST_FLAG if raised is not None else None,
        "time_to_result_ms": completed - available,
        "time_to_alert_ms": raised - completed if raised is not None else None,
        "time_to_response_ms": responded - raised if raised is not None and responded else None,
        "interacted": responded is not None,
    }
    records: list[LineageRecord] = []
    prev: str | None = None
    for revision in range(1, revisions + 1):
        final = revision == revisions
        report_final = completed + HOUR_MS if final else None
        fields = {
            **common,
            "report_id": f"rep-{site_id}-{index}" if final else None,
            "report_final_at_ms": report_final,
            "report_status": ReportStatus.FINAL if final else None,
            "report_label": label if final else None,
            "label_method": LabelMethod.NLP if final else None,
            "exam_completed_at_ms": available - MINUTE_MS,
            "report_tat_ms": report_final - (available - MINUTE_MS) if report_final else None,
            "outcome": outcome if final else Outcome.AWAITING_REPORT,
            "review_candidate": final and outcome is Outcome.FALSE_POSITIVE and responded is None,
            "completeness": Completeness.COMPLETE if final else Completeness.OPEN,
            "event_ids": tuple(f"ev-{site_id}-{index}-{n}" for n in range(revision + 1)),
            "revision": revision,
            "updated_at_ms": report_final or completed,
            "prev_hash": prev,
            "record_hash": "",
        }
        draft = LineageRecord(**fields)
        record = draft.model_copy(update={"record_hash": record_hash(draft)})
        records.append(record)
        prev = record.record_hash
    return records


def lineage_records(count: int, *, sites: int = 3, seed: int = 7) -> list[LineageRecord]:
    """Returns about ``count`` lineage revisions (2 per key), keys spread over sites."""
    rng = random.Random(seed)
    out: list[LineageRecord] = []
    index = 0
    while len(out) < count:
        site = f"site-{index % sites}"
        out.extend(lineage_chain(site, f"1.2.840.{index}", index, rng))
        index += 1
    return out[:count]


def kpi_emissions(window_start_ms: int = T0 - T0 % DAY_MS) -> list[KpiValue]:
    """Returns one window's emissions: two current values, final, a late revision 2."""
    base = {
        "kpi": "alert_ppv",
        "window_size": "1d",
        "window_start_ms": window_start_ms,
        "window_end_ms": window_start_ms + DAY_MS,
        "site_id": "site-0",
        "algorithm_name": "ich-detector",
        "algorithm_version": "2.1.0",
        "finding_code": "ICH",
    }
    return [
        KpiValue(**base, numerator=1, denominator=4, value=0.25, final=False, revision=1),
        KpiValue(**base, numerator=2, denominator=5, value=0.4, final=False, revision=1),
        KpiValue(**base, numerator=3, denominator=6, value=0.5, final=True, revision=1),
        KpiValue(**base, numerator=4, denominator=7, value=4 / 7, final=True, revision=2),
    ]


def breaches() -> list[Breach]:
    """Returns breach b-1 opening and resolving, and b-2 opening."""
    base = {
        "rule_id": "ppv-30d",
        "kpi": "alert_ppv",
        "severity": Severity.WARNING,
        "window_size": "30d",
        "window_start_ms": T0,
        "window_end_ms": T0 + 30 * DAY_MS,
        "site_id": "site-0",
        "algorithm_name": "ich-detector",
        "algorithm_version": "2.1.0",
        "finding_code": "ICH",
        "value": 0.2,
        "threshold": 0.3,
        "evidence": "3 consecutive final windows below 0.30",
    }
    return [
        Breach(breach_id="b-1", state=BreachState.OPEN, **base),
        Breach(breach_id="b-1", state=BreachState.RESOLVED, **base),
        Breach(breach_id="b-2", state=BreachState.OPEN, **{**base, "severity": Severity.CRITICAL}),
    ]


def review_candidates() -> list[ReviewCandidate]:
    return [
        ReviewCandidate(
            site_id="site-0",
            study_uid="1.2.840.1",
            algorithm_name="ich-detector",
            algorithm_version="2.1.0",
            finding_code="ICH",
            score=0.91,
            report_id="rep-1",
            report_final_at_ms=T0 + DAY_MS,
            revision=revision,
            record_hash=f"{revision:064x}",
            reason="AI positive, report absent, no interaction",
        )
        for revision in (2, 3)
    ]


def dead_letters() -> list[DeadLetter]:
    return [
        DeadLetter(
            reason=DeadLetterReason.UNDECODABLE,
            message="not Confluent-framed Avro",
            key=b"1.2.840.9",
            value=b"\x00\xff\xfe garbage \x00",
            headers=(Header(key="imgov.schema_id", value=b"\x00\x01"), Header(key="empty")),
            source_topic="imaging.ai.inference.v1",
            source_partition=2,
            source_offset=4711,
            received_at_ms=T0,
        ),
        DeadLetter(
            reason=DeadLetterReason.LATE_AFTER_EVICTION,
            message="study evicted",
            value=b'{"event_id":"late-1"}',
            event_id="late-1",
            study_uid="1.2.840.10",
        ),
    ]


def input_events() -> list[InferenceEvent | AlertEvent | ReportEvent]:
    """Returns one event of each kind, with direct identifiers to be removed."""
    common = {"site_id": "site-0", "study_uid": "1.2.840.1"}
    return [
        InferenceEvent(
            event_id="inf-1",
            occurred_at_ms=T0,
            patient_id="PATIENT-123",
            accession_number="ACC-9",
            modality="CT",
            body_part="HEAD",
            algorithm_name="ich-detector",
            algorithm_version="2.1.0",
            finding_code="ICH",
            status=InferenceStatus.SUCCEEDED,
            score=0.91,
            threshold=0.5,
            result=InferenceResult.POSITIVE,
            **common,
        ),
        AlertEvent(
            event_id="alert-1",
            occurred_at_ms=T0 + MINUTE_MS,
            alert_id="a-1",
            algorithm_name="ich-detector",
            algorithm_version="2.1.0",
            finding_code="ICH",
            state=AlertState.RAISED,
            channel=AlertChannel.WORKLIST_FLAG,
            recipient_id="DR-WHO",
            **common,
        ),
        ReportEvent(
            event_id="rep-1",
            occurred_at_ms=T0 + DAY_MS,
            patient_id="PATIENT-123",
            report_id="r-1",
            status=ReportStatus.FINAL,
            interpreter_id="RAD-7",
            findings=(
                Finding(finding_code="ICH", label=Label.ABSENT, label_method=LabelMethod.NLP),
            ),
            **common,
        ),
    ]


def every_kind() -> Iterator[object]:
    """Yields a few records of every kind a sink accepts."""
    yield from lineage_records(12)
    yield from kpi_emissions()
    yield from breaches()
    yield from review_candidates()
    yield from dead_letters()
    yield from input_events()
