"""Test inputs: a tiny generator of valid events and a corpus of bad inputs.

``sample_events`` makes a realistic mix of the three event types for tests and
benchmarks (about 30% inference, 10% alert, 60% report events); the clinic simulator
(``streams.simulate``) is the real generator. ``bad_input_corpus`` and
``bad_jsonl_lines`` build inputs that must each be rejected with exactly one
dead-letter reason: random bytes, truncated Avro, wrong magic byte, unknown schema ids,
schema-valid records with invalid values, oversized messages. Everything is deterministic
for a given seed.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

import fastavro

from schemas.codec import HEADER_SCHEMA_ID, MAGIC_BYTE, Codec, schema_for_reading
from schemas.errors import SchemaNotFoundError
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
    Priority,
    ReportEvent,
    ReportStatus,
)
from schemas.files import DEFAULT_MAX_LINE_BYTES, event_to_json_line
from schemas.records import Completeness, DeadLetterReason, LineageRecord, Outcome
from schemas.subjects import load_avsc
from schemas.units import DAY_MS, MINUTE_MS

__all__ = ["CorpusItem", "bad_input_corpus", "bad_jsonl_lines", "sample_events"]

_ALGORITHMS = (("ich-detect", "2.3.1", "ICH", "HEAD"), ("pe-detect", "1.4.0", "PE", "CHEST"))


@dataclass(frozen=True, slots=True)
class CorpusItem:
    """One bad input and what rejecting it must say.

    Attributes:
        name: What is wrong, for test ids.
        value: The message value (or the JSON Lines line).
        expected: The one reason it must be rejected with.
        headers: Kafka headers to decode it with.
        field: For VALIDATION_FAILED, the field the error must name.
    """

    name: str
    value: bytes
    expected: DeadLetterReason
    headers: tuple[tuple[str, bytes], ...] = ()
    field: str | None = None


def sample_events(count: int, *, seed: int = 0, end_ms: int = 1_760_000_000_000) -> list[Event]:
    """Returns ``count`` valid events of studies from the 30 days before ``end_ms``.

    Each study gets one inference (ICH on head CT or PE on CT angiography), a four-state
    alert lifecycle when the AI is positive (about 10%), and a preliminary then a final
    report; events are in study order, not time order.
    """
    rng = random.Random(seed)
    events: list[Event] = []
    study = 0
    while len(events) < count:
        study += 1
        events.extend(_study_events(rng, study, end_ms - 30 * DAY_MS + rng.randrange(29 * DAY_MS)))
    return events[:count]


def _study_events(rng: random.Random, study: int, t0: int) -> list[Event]:
    site = f"site-{rng.randrange(1, 4)}"
    uid = f"1.2.826.0.1.3680043.8.498.{study}{rng.randrange(10**9)}"
    common = {"site_id": site, "study_uid": uid}
    name, version, code, body = _ALGORITHMS[study % 2]
    diseased = rng.random() < 0.1
    score = round(rng.betavariate(5.0, 2.0) if diseased else rng.betavariate(1.2, 8.0), 4)
    positive = score >= 0.5
    failed = rng.random() < 0.015
    inference = InferenceEvent(
        event_id=f"inf-{study}",
        occurred_at_ms=t0 + 95_000,
        **common,
        accession_number=f"ACC{study:08d}",
        patient_id=f"MRN{rng.randrange(10**7):07d}",
        modality="CT",
        body_part=body,
        manufacturer=rng.choice(("GE", "SIEMENS", "PHILIPS", None)),
        algorithm_name=name,
        algorithm_version=version,
        finding_code=code,
        status=InferenceStatus.FAILED if failed else InferenceStatus.SUCCEEDED,
        failure_reason="timeout fetching series" if failed else None,
        score=None if failed else score,
        threshold=0.5,
        result=(
            InferenceResult.NOT_APPLICABLE
            if failed
            else InferenceResult.POSITIVE
            if positive
            else InferenceResult.NEGATIVE
        ),
        study_available_at_ms=t0,
        started_at_ms=t0 + 5_000,
        completed_at_ms=t0 + 95_000,
    )
    events: list[Event] = [inference]
    if positive and not failed:
        channel = rng.choice(tuple(AlertChannel))
        states = [AlertState.RAISED, AlertState.DELIVERED, AlertState.VIEWED]
        states.append(rng.choice((AlertState.ACKNOWLEDGED, AlertState.DISMISSED)))
        for step, state in enumerate(states):
            events.append(
                AlertEvent(
                    event_id=f"alert-{study}-{step}",
                    occurred_at_ms=t0 + 100_000 + step * rng.randrange(10_000, 300_000),
                    **common,
                    alert_id=f"alert-{study}",
                    inference_event_id=inference.event_id,
                    algorithm_name=name,
                    algorithm_version=version,
                    finding_code=code,
                    state=state,
                    channel=channel,
                    recipient_role="radiologist",
                    recipient_id=f"RAD{rng.randrange(100):03d}",
                    priority_before=Priority.ROUTINE,
                    priority_after=Priority.STAT,
                    dismiss_reason="not clinically relevant" if state == "DISMISSED" else None,
                )
            )
    present = positive if rng.random() < 0.85 else not positive
    finding = Finding(
        finding_code=code,
        label=Label.PRESENT if present else Label.ABSENT,
        label_method=LabelMethod.NLP,
    )
    for step, status in enumerate((ReportStatus.PRELIMINARY, ReportStatus.FINAL)):
        events.append(
            ReportEvent(
                event_id=f"rep-{study}-{step}",
                occurred_at_ms=t0 + 1_800_000 + step * rng.randrange(600_000, 7_200_000),
                **common,
                accession_number=f"ACC{study:08d}",
                modality="CT",
                body_part=body,
                procedure_code="CTHEAD" if body == "HEAD" else "CTPA",
                report_id=f"rep-{study}",
                status=status,
                hl7_result_status="P" if step == 0 else "F",
                interpreter_id=f"RAD{rng.randrange(100):03d}",
                exam_completed_at_ms=t0 - MINUTE_MS,
                findings=(finding,),
            )
        )
    return events


def bad_input_corpus(codec: Codec, *, now_ms: int, seed: int = 0) -> list[CorpusItem]:
    """Returns bad Kafka message values, each with the one reason the codec must give.

    Args:
        codec: The codec under test: its registry supplies real ids, its
            ``max_message_bytes`` the oversize limit. Its validator's clock must read
            ``now_ms``.
        now_ms: The validator's current time.
        seed: Varies random bytes, cut points and unknown ids.
    """
    rng = random.Random(seed)
    events = sample_events(200, seed=seed, end_ms=now_ms)
    inference = next(e for e in events if isinstance(e, InferenceEvent))
    alert = next(e for e in events if isinstance(e, AlertEvent))
    report = next(e for e in events if isinstance(e, ReportEvent))
    good = codec.encode(inference)
    undecodable = DeadLetterReason.UNDECODABLE
    items = [
        CorpusItem("empty message", b"", undecodable),
        CorpusItem("wrong magic byte 0x01", b"\x01" + good[1:], undecodable),
        CorpusItem("JSON instead of Avro", event_to_json_line(inference), undecodable),
        CorpusItem("trailing bytes", good + rng.randbytes(rng.randrange(1, 9)), undecodable),
        CorpusItem("enum index out of range", _bad_enum(codec, inference), undecodable),
        CorpusItem(
            "non-decimal schema id header",
            codec.encode(inference, framed=False),
            undecodable,
            headers=((HEADER_SCHEMA_ID, b"12ab"),),
        ),
    ]
    for n in range(3):
        short = bytes((MAGIC_BYTE,)) + rng.randbytes(n + 1)
        items.append(CorpusItem(f"shorter than the header #{n}", short, undecodable))
    for n in range(5):
        noise = bytes((rng.randrange(1, 256),)) + rng.randbytes(rng.randrange(4, 200))
        items.append(CorpusItem(f"random bytes #{n}", noise, undecodable))
    for n, event in enumerate((inference, alert, report, inference, report)):
        encoded = codec.encode(event)
        cut = rng.randrange(6, len(encoded))
        items.append(CorpusItem(f"truncated Avro #{n}", encoded[:cut], undecodable))

    unknown = DeadLetterReason.UNKNOWN_SCHEMA
    body = good[5:]
    for n in range(2):
        schema_id = _unknown_id(codec, rng)
        framed = bytes((MAGIC_BYTE,)) + schema_id.to_bytes(4, "big") + body
        items.append(CorpusItem(f"unknown schema id #{n}", framed, unknown))
    items.append(
        CorpusItem(
            "unknown schema id in header",
            body,
            unknown,
            headers=((HEADER_SCHEMA_ID, str(_unknown_id(codec, rng)).encode()),),
        )
    )
    items.append(CorpusItem("an output record on an input topic", _lineage(codec), unknown))

    limit = codec.max_message_bytes
    oversized = DeadLetterReason.OVERSIZED
    huge = inference.model_copy(update={"failure_reason": "x" * limit})
    items.append(CorpusItem("oversized event", codec.encode(huge), oversized))
    items.append(CorpusItem("oversized noise", rng.randbytes(limit + 1), oversized))

    for name, event, field in _invalid_values(inference, alert, report, now_ms, rng):
        items.append(
            CorpusItem(name, codec.encode(event), DeadLetterReason.VALIDATION_FAILED, field=field)
        )
    return items


def _invalid_values(
    inference: InferenceEvent,
    alert: AlertEvent,
    report: ReportEvent,
    now_ms: int,
    rng: random.Random,
) -> list[tuple[str, Event, str]]:
    far_future = now_ms + rng.randrange(2, 400) * DAY_MS
    bad_finding = Finding(finding_code=" ", label=Label.ABSENT, label_method=LabelMethod.NLP)
    cases: list[tuple[str, Event, dict[str, Any], str]] = [
        ("score above 1", inference, {"score": 1.7}, "score"),
        ("negative score", inference, {"score": -0.01}, "score"),
        ("score NaN", inference, {"score": float("nan")}, "score"),
        ("threshold above 1", inference, {"threshold": 2.0}, "threshold"),
        ("empty study_uid", inference, {"study_uid": ""}, "study_uid"),
        ("blank event_id", inference, {"event_id": "   "}, "event_id"),
        ("empty site_id", report, {"site_id": ""}, "site_id"),
        ("empty modality", inference, {"modality": ""}, "modality"),
        ("empty algorithm_name", alert, {"algorithm_name": ""}, "algorithm_name"),
        ("empty alert_id", alert, {"alert_id": ""}, "alert_id"),
        ("empty report_id", report, {"report_id": ""}, "report_id"),
        ("empty finding_code", report, {"findings": (bad_finding,)}, "findings[0].finding_code"),
        ("timestamp in 1970", inference, {"occurred_at_ms": 0}, "occurred_at_ms"),
        ("timestamp in seconds", alert, {"occurred_at_ms": now_ms // 1000}, "occurred_at_ms"),
        ("timestamp in the future", inference, {"completed_at_ms": far_future}, "completed_at_ms"),
        ("timestamp in microseconds", report, {"occurred_at_ms": now_ms * 1000}, "occurred_at_ms"),
    ]  # fmt: skip
    return [(name, event.model_copy(update=update), field) for name, event, update, field in cases]


def _unknown_id(codec: Codec, rng: random.Random) -> int:
    while True:
        schema_id = rng.randrange(1, 2**31)
        try:
            codec.registry.schema_by_id(schema_id)
        except SchemaNotFoundError:
            return schema_id


def _bad_enum(codec: Codec, event: InferenceEvent) -> bytes:
    # Write the record with ``status`` as a long of 99: the same bytes as enum index 99.
    schema = load_avsc()["imgov.events.v1.InferenceEvent"]
    fields = [dict(f, type="long") if f["name"] == "status" else f for f in schema["fields"]]
    data = event.model_dump()
    data["status"] = 99
    buffer = io.BytesIO()
    buffer.write(bytes((MAGIC_BYTE,)) + codec.schema_id(InferenceEvent).to_bytes(4, "big"))
    fastavro.schemaless_writer(buffer, schema_for_reading(dict(schema, fields=fields)), data)
    return buffer.getvalue()


def _lineage(codec: Codec) -> bytes:
    record = LineageRecord(
        site_id="site-1",
        study_uid="1.2.3",
        algorithm_name="ich-detect",
        finding_code="ICH",
        outcome=Outcome.AWAITING_REPORT,
        completeness=Completeness.OPEN,
        revision=1,
        updated_at_ms=1_700_000_000_000,
        record_hash="0" * 64,
    )
    return codec.encode(record)


def bad_jsonl_lines(
    *, now_ms: int, seed: int = 0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[CorpusItem]:
    """Returns bad JSON Lines lines (without newline), each with the reason it must get."""
    rng = random.Random(seed)
    inference = next(e for e in sample_events(5, seed=seed, end_ms=now_ms))
    line = event_to_json_line(inference).rstrip(b"\n")
    data = json.loads(line)

    def dumps(**update: Any) -> bytes:
        changed = {k: v for k, v in {**data, **update}.items() if v is not _DROP}
        return json.dumps(changed, separators=(",", ":")).encode()

    undecodable, unknown = DeadLetterReason.UNDECODABLE, DeadLetterReason.UNKNOWN_SCHEMA
    invalid, oversized = DeadLetterReason.VALIDATION_FAILED, DeadLetterReason.OVERSIZED
    cases: list[tuple[str, bytes, DeadLetterReason, str | None]] = [
        ("not JSON", line[: rng.randrange(5, len(line) - 1)], undecodable, None),
        ("invalid UTF-8", b'{"event_type":"\xff\xfe"}', undecodable, None),
        ("a JSON array", b"[1,2,3]", undecodable, None),
        ("no event_type", dumps(event_type=_DROP), unknown, "event_type"),
        ("unknown event_type", dumps(event_type="lineage"), unknown, "event_type"),
        ("score is text", dumps(score="high"), invalid, "score"),
        ("status unknown", dumps(status="DONE"), invalid, "status"),
        ("missing modality", dumps(modality=_DROP), invalid, "modality"),
        ("unexpected field", dumps(colour="red"), invalid, "colour"),
        ("score above 1", dumps(score=1.7), invalid, "score"),
        ("timestamp in 1970", dumps(occurred_at_ms=5), invalid, "occurred_at_ms"),
        ("oversized line", dumps(failure_reason="x" * max_line_bytes), oversized, None),
    ]  # fmt: skip
    return [CorpusItem(name, value, reason, field=field) for name, value, reason, field in cases]


_DROP = object()
