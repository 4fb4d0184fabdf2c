"""Compact bytes for a :class:`~streams.core.lineage.state.StudyState` (DESIGN §10: <= 1 KB).

Called by stores that persist state (``MappingStudyStore``: a Faust/RocksDB table, whose
changelog carries every version). The encoding is positional JSON, chosen over a
binary format because it needs only the standard library and stays inspectable:

- the format number comes first; fact arrays are append-only (a new field goes at the
  end and decodes with a default) and trailing nulls are dropped;
- timestamps are offsets back from the study's last event time (short numbers);
- enum members are small integers from the explicit, append-only tables below
  (a member missing from a table is written as its string value, so a new schema
  symbol degrades to a few more bytes, never to a wrong decode);
- canonical UUID event ids are packed to 16 bytes of unpadded base64url behind ``~``
  (ids that really start with ``~`` are escaped by doubling it);
- an alert's ``inference_event_id`` that names an inference of the same row is the
  index of that inference;
- hashes and pseudonyms (SHA-256 hex) are unpadded base64 (43 characters, not 64).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import TypeVar

from schemas.events import (
    AlertChannel,
    AlertState,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportStatus,
)
from streams.core.lineage.state import (
    AlertFact,
    FindingFact,
    InferenceFact,
    ReportFact,
    RowKey,
    RowMeta,
    RowState,
    StudyState,
    StudyStateError,
)

__all__ = ["ENUM_CODES", "STATE_FORMAT", "decode_state", "encode_state"]

STATE_FORMAT = 1
"""Version of the encoding; the first element of every encoded state."""

# Append-only: a state written today must decode the same way forever.
ENUM_CODES: dict[type[StrEnum], tuple[str, ...]] = {
    InferenceStatus: ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"),
    InferenceResult: ("POSITIVE", "NEGATIVE", "INDETERMINATE", "NOT_APPLICABLE"),
    AlertState: (
        "RAISED",
        "DELIVERED",
        "VIEWED",
        "ACKNOWLEDGED",
        "ACCEPTED",
        "MODIFIED",
        "DISMISSED",
        "ESCALATED",
        "EXPIRED",
    ),
    AlertChannel: (
        "WORKLIST_FLAG",
        "WORKLIST_REPRIORITISATION",
        "DESKTOP_WIDGET",
        "MOBILE_PUSH",
        "PAGE",
        "FHIRCAST",
        "OTHER",
    ),
    ReportStatus: (
        "PRELIMINARY",
        "FINAL",
        "CORRECTED",
        "AMENDED",
        "APPENDED",
        "CANCELLED",
        "ENTERED_IN_ERROR",
    ),
    Label: ("PRESENT", "ABSENT", "INDETERMINATE"),
    LabelMethod: ("STRUCTURED", "NLP", "LLM", "MANUAL"),
}
_TO_CODE = {
    enum: {value: code for code, value in enumerate(values)} for enum, values in ENUM_CODES.items()
}

_E = TypeVar("_E", bound=StrEnum)


def encode_state(state: StudyState) -> bytes:
    """Returns the compact encoding of a state."""
    base = state.last_event_ms
    rows = [_encode_row(base, key, row) for key, row in sorted(state.rows.items())]
    reports = [
        _trim(
            [
                _pack_id(f.event_id),
                base - f.occurred_at_ms,
                _code(f.status),
                f.report_id,
                [[x.finding_code, _code(x.label), _code(x.label_method)] for x in f.findings]
                or None,
                _off(base, f.exam_completed_at_ms),
                _off(base, f.critical_result_communicated_at_ms),
                f.modality,
                f.body_part,
            ]
        )
        for f in state.reports
    ]
    payload = _trim(
        [
            STATE_FORMAT,
            base,
            state.evicted_at_ms,
            rows or None,
            reports or None,
            _b64(state.patient_ref),
            _b64(state.accession_ref),
        ]
    )
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _encode_row(base: int, key: RowKey, row: RowState) -> list[object]:
    inferences = [
        _trim(
            [
                _pack_id(f.event_id),
                base - f.occurred_at_ms,
                f.algorithm_version,
                _code(f.status),
                _code(f.result),
                f.modality,
                f.score,
                f.threshold,
                _off(base, f.study_available_at_ms),
                _off(base, f.completed_at_ms),
                f.body_part,
                f.manufacturer,
                f.failure_reason,
            ]
        )
        for f in row.inferences
    ]
    alerts = [
        [_pack_id(f.event_id), base - f.occurred_at_ms, _code(f.state), _code(f.channel)]
        for f in row.alerts
    ]
    inference_ids = [f.event_id for f in row.inferences]
    referenced = [
        inference_ids.index(i) if i in inference_ids else _pack_id(i)
        for i in row.alert_inference_ids
    ]
    meta = None
    if row.emitted is not None:
        meta = _trim(
            [row.emitted.revision, _b64(row.emitted.record_hash), _b64(row.emitted.prev_hash)]
        )
    # The alerts' version is almost always the inference's: write it only if it differs.
    versions: list[str] | int | None = list(row.alert_versions) or None
    if row.inferences and versions == [row.inferences[0].algorithm_version]:
        versions = 0
    return _trim(
        [
            key[0],
            key[1],
            meta,
            inferences or None,
            alerts or None,
            versions,
            1 if row.eligible else None,
            referenced or None,
        ]
    )


def decode_state(data: bytes) -> StudyState:
    """Returns the state encoded by :func:`encode_state`.

    Raises:
        StudyStateError: the bytes are not an encoded state of a known format. The
            message says no more: the payload may hold pseudonyms and event ids.
    """
    try:
        payload = json.loads(data)
        if not isinstance(payload, list) or not payload or payload[0] != STATE_FORMAT:
            raise StudyStateError(f"not a study state of format {STATE_FORMAT}")
        return _decode_payload(payload)
    except StudyStateError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise StudyStateError("undecodable study state") from exc


def _decode_payload(payload: list[object]) -> StudyState:
    _, raw_base, evicted_at, rows, reports, patient_ref, accession_ref = _pad(payload, 7)
    base = _int(raw_base)
    decoded_reports = []
    for item in _list(reports):
        eid, t, status, report_id, findings, exam, crit, modality, body_part = _pad(_list(item), 9)
        decoded_reports.append(
            ReportFact(
                event_id=_unpack_id(eid),
                occurred_at_ms=base - _int(t),
                status=_member(ReportStatus, status),
                report_id=_str(report_id),
                exam_completed_at_ms=_abs(base, exam),
                critical_result_communicated_at_ms=_abs(base, crit),
                modality=_opt_str(modality),
                body_part=_opt_str(body_part),
                findings=tuple(
                    FindingFact(_str(c), _member(Label, lb), _member(LabelMethod, m))
                    for c, lb, m in (_list(x) for x in _list(findings))
                ),
            )
        )
    return StudyState(
        last_event_ms=base,
        patient_ref=_unb64(patient_ref),
        accession_ref=_unb64(accession_ref),
        reports=tuple(decoded_reports),
        rows=dict(_decode_row(base, _list(item)) for item in _list(rows)),
        evicted_at_ms=None if evicted_at is None else _int(evicted_at),
    )


def _decode_row(base: int, item: list[object]) -> tuple[RowKey, RowState]:
    name, finding, meta, inferences, alerts, versions, eligible, referenced = _pad(item, 8)
    emitted = None
    if meta is not None:
        revision, record_hash, prev_hash = _pad(_list(meta), 3)
        emitted = RowMeta(_int(revision), _unb64(prev_hash), _unb64(_str(record_hash)) or "")
    decoded_inferences = tuple(_decode_inference(base, _list(x)) for x in _list(inferences))
    decoded_alerts = tuple(
        AlertFact(_unpack_id(eid), base - _int(t), _member(AlertState, s), _member(AlertChannel, c))
        for eid, t, s, c in (_list(a) for a in _list(alerts))
    )
    if versions == 0:
        alert_versions: tuple[str, ...] = (decoded_inferences[0].algorithm_version,)
    else:
        alert_versions = tuple(_str(v) for v in _list(versions))
    inference_ids = tuple(
        decoded_inferences[r].event_id if isinstance(r, int) else _unpack_id(r)
        for r in _list(referenced)
    )
    row = RowState(
        inferences=decoded_inferences,
        alerts=decoded_alerts,
        alert_versions=alert_versions,
        alert_inference_ids=inference_ids,
        eligible=eligible == 1,
        emitted=emitted,
    )
    return (_str(name), _str(finding)), row


def _decode_inference(base: int, item: list[object]) -> InferenceFact:
    (
        eid,
        t,
        version,
        status,
        result,
        modality,
        score,
        threshold,
        available,
        completed,
        body_part,
        manufacturer,
        failure_reason,
    ) = _pad(item, 13)
    return InferenceFact(
        event_id=_unpack_id(eid),
        occurred_at_ms=base - _int(t),
        algorithm_version=_str(version),
        modality=_str(modality),
        body_part=_opt_str(body_part),
        manufacturer=_opt_str(manufacturer),
        status=_member(InferenceStatus, status),
        failure_reason=_opt_str(failure_reason),
        score=_opt_float(score),
        threshold=_opt_float(threshold),
        result=_member(InferenceResult, result),
        study_available_at_ms=_abs(base, available),
        completed_at_ms=_abs(base, completed),
    )


# --- field codecs -----------------------------------------------------------------------


def _code(member: StrEnum) -> int | str:
    code = _TO_CODE[type(member)].get(member.value)
    return member.value if code is None else code


def _member(enum: type[_E], raw: object) -> _E:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 0:
            raise ValueError("negative enum code")
        return enum(ENUM_CODES[enum][raw])
    return enum(_str(raw))


def _pack_id(event_id: str) -> str:
    if event_id.startswith("~"):
        return "~" + event_id
    if len(event_id) == 36:
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            return event_id
        if str(parsed) == event_id:
            return "~" + base64.urlsafe_b64encode(parsed.bytes).decode().rstrip("=")
    return event_id


def _unpack_id(raw: object) -> str:
    text = _str(raw)
    if text.startswith("~~"):
        return text[1:]
    if text.startswith("~"):
        return str(uuid.UUID(bytes=base64.urlsafe_b64decode(text[1:] + "==")))
    return text


def _b64(hex_digest: str | None) -> str | None:
    if hex_digest is None:
        return None
    return base64.b64encode(bytes.fromhex(hex_digest)).decode().rstrip("=")


def _unb64(raw: object) -> str | None:
    if raw is None:
        return None
    text = _str(raw)
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True).hex()


def _off(base: int, value: int | None) -> int | None:
    return None if value is None else base - value


def _abs(base: int, offset: object) -> int | None:
    return None if offset is None else base - _int(offset)


def _trim(items: list[object]) -> list[object]:
    while items and items[-1] is None:
        items.pop()
    return items


def _pad(items: Sequence[object], length: int) -> list[object]:
    # Missing trailing fields were null (or added later); extra ones were added by a
    # newer writer and are ignored.
    return [*items[:length], *([None] * (length - len(items)))]


def _list(value: object) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("expected an array")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError("expected a number")
    return float(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)
