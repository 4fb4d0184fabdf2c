"""DICOM SR AI results (IHE AI Results, TID 1500) over C-STORE -> InferenceEvent (DESIGN §3, §11).

An AI platform stores one Structured Report per analysed study: a TID 1500 Imaging
Measurement Report whose measurement groups name a finding, include the algorithm
identification (TID 4019) and carry a qualitative evaluation (present/absent) and/or a
score. Each (finding, algorithm) of a report is one :class:`~schemas.events.InferenceEvent`.
Which content item gives what is configuration (:class:`DicomSrMapping`; the shipped
``dicom_sr.toml`` documents every entry). pydicom decodes the dataset; this module walks
its content tree.

``inference_events`` either returns every event of a report or raises :class:`SrRefused`
with the C-STORE failure status and a reason without identifiers. The event ids are
``dicom-sr:<SOP Instance UID>:<finding code>`` (``:<n>`` appended when two algorithms
report one finding), so an instance stored twice (a retry after a lost response) gives
the same events, which the pipeline de-duplicates.

``start_dicom_scp`` serves C-STORE (and C-ECHO) with pynetdicom. Its handler answers:

* 0x0000 once :meth:`Delivery.deliver` returned: the events are on Kafka;
* 0xA700 (out of resources) when delivery, or writing the dead letter, failed or timed
  out: transient, nothing is dead-lettered and the sender keeps the instance to retry;
* the refusal's status (table below) after the dead letter, holding the original dataset
  as a DICOM Part 10 file, was written.

A wrong SOP class (a CT image, say) is refused at association negotiation: the SCP only
accepts presentation contexts of the three SR storage classes and Verification, so the
sender is told "abstract syntax not supported" and never sends it (storescu reports "no
presentation context"); nothing reaches the SCP, nothing is dead-lettered. A dataset sent
over an SR context that is not such an SR is refused with 0xA900 and dead-lettered.

Failure statuses (PS3.4 C-STORE: A9xx "data set does not match SOP class", Cxxx "cannot
understand")::

    0xA700  out of resources: Kafka did not take the events (retry later)
    0xA900  not a Comprehensive, Enhanced or Comprehensive 3D SR with a content tree
    0xC000  not decodable, or not a TID 1500 Imaging Measurement Report
    0xC001  a required attribute is missing or malformed (study UID, SOP instance UID,
            content date/time, site, modality)
    0xC002  a result without algorithm identification (TID 4019 name and version)
    0xC003  no result the mapping understands: a finding not in the mapping, a finding
            with neither an evaluation, nor a score, nor a failed run status, or no
            finding at all
    0xC004  a score that is not a number in 0..1 after scaling, or in an unknown unit
    0xC005  an event breaks a contract rule (``schemas.validation``: a time before 2000
            or too far ahead of the gateway's clock, ...)

:class:`DicomScp` wraps the started server for ``imgov gateway``: ``stop`` stops
accepting, lets the associations in flight finish, and aborts what remains.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.transport import ThreadedAssociationServer

from schemas.errors import ImgovError, ValidationFailedError
from schemas.events import Event, InferenceEvent, InferenceResult, InferenceStatus
from schemas.records import DeadLetter, DeadLetterReason, Header
from schemas.validation import EventValidator
from streams.gateway.delivery import Delivery, DeliveryError, provenance_headers
from streams.gateway.mapping import load_mapping
from streams.metrics import GatewayMetrics

__all__ = [
    "SR_STORAGE_CLASSES",
    "DicomScp",
    "DicomSrMapping",
    "SrRefused",
    "SrStatus",
    "inference_events",
    "load_dicom_sr_mapping",
    "start_dicom_scp",
]

_LOG = logging.getLogger(__name__)

SR_STORAGE_CLASSES = (ComprehensiveSRStorage, EnhancedSRStorage, Comprehensive3DSRStorage)
"""The SOP classes the SCP accepts (with Verification)."""
_VERIFICATION = UID("1.2.840.10008.1.1")


class SrStatus:
    """C-STORE response statuses the SCP answers with (see the module docstring)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    SOP_CLASS_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    MISSING_ATTRIBUTE = 0xC001
    NO_ALGORITHM = 0xC002
    NO_RESULT = 0xC003
    BAD_SCORE = 0xC004
    INVALID_EVENT = 0xC005


class SrRefused(ImgovError):
    """An SR imgov cannot accept: answered with a failure status and dead-lettered.

    Attributes:
        status: the C-STORE failure status (:class:`SrStatus`).
        reason: what is wrong, never the value of an identifier.
        dead_letter_reason: the DESIGN §6 reason of its dead letter.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"0x{status:04X}: {reason}")
        self.status = status
        self.reason = reason
        self.dead_letter_reason = {
            SrStatus.SOP_CLASS_MISMATCH: DeadLetterReason.UNKNOWN_SCHEMA,
            SrStatus.CANNOT_UNDERSTAND: DeadLetterReason.UNDECODABLE,
        }.get(status, DeadLetterReason.VALIDATION_FAILED)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = "UTC"
    ignore_unmapped_findings: bool = False


class _Fields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = "InstitutionName"
    study_uid: str = "StudyInstanceUID"
    accession_number: str | None = "AccessionNumber"
    patient_id: str | None = "PatientID"
    body_part: str | None = "BodyPartExamined"
    default_site_id: str = ""
    default_modality: str = ""

    @field_validator("site_id", "study_uid", "accession_number", "patient_id", "body_part")
    @classmethod
    def _a_keyword(cls, value: str | None) -> str | None:
        if value is not None and tag_for_keyword(value) is None:
            raise ValueError(f"not a DICOM keyword: {value!r}")
        return value


class _Score(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    concepts: tuple[str, ...] = ("122157^DCM",)
    threshold_concepts: tuple[str, ...] = ()
    units: dict[str, float] = Field(default_factory=lambda: {"1^UCUM": 1.0, "%^UCUM": 0.01})
    default_threshold: float | None = None


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    concept: str | None = None
    values: dict[str, InferenceStatus] = Field(default_factory=dict)
    failure_reason: str | None = None


class DicomSrMapping(BaseModel):
    """Which content items of a TID 1500 report give an InferenceEvent (``dicom_sr.toml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: _Message = Field(default_factory=_Message)
    fields: _Fields = Field(default_factory=_Fields)
    sites: dict[str, str] = Field(default_factory=dict)
    findings: dict[str, str] = Field(default_factory=dict)
    results: dict[str, InferenceResult] = Field(default_factory=dict)
    score: _Score = Field(default_factory=_Score)
    thresholds: dict[str, float] = Field(default_factory=dict)
    status: _Status = Field(default_factory=_Status)
    times: dict[str, Literal["started_at", "study_available_at"]] = Field(default_factory=dict)

    @field_validator("message")
    @classmethod
    def _known_zone(cls, value: _Message) -> _Message:
        try:
            ZoneInfo(value.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:  # the former is a KeyError
            raise ValueError(f"unknown time zone {value.timezone!r}") from exc
        return value

    @field_validator("results")
    @classmethod
    def _a_result(cls, value: dict[str, InferenceResult]) -> dict[str, InferenceResult]:
        if InferenceResult.NOT_APPLICABLE in value.values():
            raise ValueError("an evaluation maps to POSITIVE, NEGATIVE or INDETERMINATE")
        return value

    def threshold(self, finding_code: str) -> float | None:
        """The operating point of a finding: its own, else the default, else None."""
        return self.thresholds.get(finding_code, self.score.default_threshold)


def load_dicom_sr_mapping(path: Path | None = None) -> DicomSrMapping:
    """Reads a mapping file (TOML); without ``path``, the shipped ``dicom_sr.toml``.

    Raises:
        ValueError: the file is not valid TOML or not a valid mapping (names the entry).
    """
    return load_mapping(DicomSrMapping, "dicom_sr.toml", path, "DICOM SR")


# Concept names (code^scheme) of the content items this module reads.
_REPORT = "126000^DCM"  # Imaging Measurement Report (TID 1500 root)
_IMAGE_LIBRARY = "111028^DCM"
_MODALITY = "121139^DCM"
_MANUFACTURER = "113878^DCM"  # Device Manufacturer: the scanner, in the image library
_FINDING = "121071^DCM"
_ALGORITHM_NAME = "111001^DCM"
_ALGORITHM_VERSION = "111003^DCM"
_MAX_DEPTH = 32  # TID 1500 nests 4-6 levels; deeper is a malformed (or hostile) tree
_RANK = {InferenceResult.NEGATIVE: 0, InferenceResult.INDETERMINATE: 1, InferenceResult.POSITIVE: 2}


@dataclass(frozen=True, slots=True)
class _Observation:
    finding_code: str
    algorithm: tuple[str, str]
    result: InferenceResult | None = None
    score: float | None = None
    threshold: float | None = None
    status: InferenceStatus | None = None
    failure_reason: str | None = None
    started_at_ms: int | None = None
    available_at_ms: int | None = None


def inference_events(dataset: Dataset, mapping: DicomSrMapping) -> list[InferenceEvent]:
    """The InferenceEvent of every (finding, algorithm) of one TID 1500 SR, ordered by
    finding code then algorithm.

    Raises:
        SrRefused: the dataset is no SR of an accepted class (0xA900) or no TID 1500
            report (0xC000), or cannot become valid events (0xC001-0xC004).
    """
    try:
        return _events(dataset, mapping)
    except SrRefused:
        raise
    except Exception as exc:  # pydicom decodes lazily: a malformed element raises here
        raise SrRefused(
            SrStatus.CANNOT_UNDERSTAND, f"content not readable ({type(exc).__name__})"
        ) from exc


def _events(dataset: Dataset, mapping: DicomSrMapping) -> list[InferenceEvent]:
    if str(dataset.get("SOPClassUID", "")) not in SR_STORAGE_CLASSES:
        raise SrRefused(SrStatus.SOP_CLASS_MISMATCH, "not a Comprehensive/Enhanced/3D SR")
    if dataset.get("ValueType") != "CONTAINER" or not dataset.get("ContentSequence"):
        raise SrRefused(SrStatus.SOP_CLASS_MISMATCH, "an SR without a content tree")
    if _concept(dataset) != _REPORT:
        raise SrRefused(SrStatus.CANNOT_UNDERSTAND, "root is not a TID 1500 measurement report")
    fields = mapping.fields
    sop_uid = _required(dataset, "SOPInstanceUID")
    study_uid = _required(dataset, fields.study_uid)
    institution = _text(dataset, fields.site_id)
    site_id = mapping.sites.get(institution, institution) or fields.default_site_id
    if not site_id:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, f"{fields.site_id} is empty")
    modality = _library_value(dataset, _MODALITY, "CODE") or fields.default_modality
    if not modality:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, "no modality in the image library")
    zone = ZoneInfo(mapping.message.timezone)
    completed_at = _content_time_ms(dataset, zone)

    merged: dict[tuple[str, tuple[str, str]], list[_Observation]] = {}
    for observation in _observations(dataset, mapping, zone):
        merged.setdefault((observation.finding_code, observation.algorithm), []).append(observation)
    if not merged:
        raise SrRefused(SrStatus.NO_RESULT, "no finding the mapping knows")
    per_finding: dict[str, int] = {}
    events = []
    for (finding_code, (name, version)), observations in sorted(merged.items()):
        per_finding[finding_code] = per_finding.get(finding_code, 0) + 1
        n = per_finding[finding_code]
        scores = [o.score for o in observations if o.score is not None]
        score = max(scores) if scores else None
        stated = [o.threshold for o in observations if o.threshold is not None]
        # The operating point the SR states (Threshold Value; of several, the lowest)
        # wins over the mapping's.
        threshold = (
            min(stated)
            if stated
            else (mapping.threshold(finding_code) if score is not None else None)
        )
        results = [o.result for o in observations if o.result is not None]
        failures = [o for o in observations if o.status not in (None, InferenceStatus.SUCCEEDED)]
        status, failure_reason = InferenceStatus.SUCCEEDED, None
        if results:
            result = max(results, key=_RANK.__getitem__)
        elif score is not None and threshold is not None:
            result = InferenceResult.POSITIVE if score >= threshold else InferenceResult.NEGATIVE
        elif failures:  # a run that failed has no result: nothing else was reported
            status, failure_reason = failures[0].status or status, failures[0].failure_reason
            result = InferenceResult.NOT_APPLICABLE
        else:
            result = InferenceResult.INDETERMINATE
        started = [o.started_at_ms for o in observations if o.started_at_ms is not None]
        available = [o.available_at_ms for o in observations if o.available_at_ms is not None]
        events.append(
            InferenceEvent(
                event_id=f"dicom-sr:{sop_uid}:{finding_code}" + (f":{n}" if n > 1 else ""),
                occurred_at_ms=completed_at,
                site_id=site_id,
                study_uid=study_uid,
                accession_number=_optional(dataset, fields.accession_number),
                patient_id=_optional(dataset, fields.patient_id),
                modality=modality,
                body_part=_optional(dataset, fields.body_part),
                manufacturer=_library_value(dataset, _MANUFACTURER, "TEXT") or None,
                algorithm_name=name,
                algorithm_version=version,
                finding_code=finding_code,
                status=status,
                failure_reason=failure_reason,
                score=score,
                threshold=threshold,
                result=result,
                study_available_at_ms=min(available) if available else None,
                started_at_ms=min(started) if started else None,
                completed_at_ms=completed_at,
            )
        )
    return events


def _observations(
    dataset: Dataset, mapping: DicomSrMapping, zone: ZoneInfo
) -> Iterator[_Observation]:
    """Every finding result of the content tree, container by container (a measurement
    group or a qualitative evaluations container), with its algorithm, the operating
    point and times it states, or the failure of its run."""
    for container, ancestors in _containers(dataset):
        children = list(container.get("ContentSequence") or ())
        group_finding = None
        for item in children:
            if item.get("ValueType") == "CODE" and _concept(item) == _FINDING:
                code = _code(item.get("ConceptCodeSequence"))
                group_finding = mapping.findings.get(code)
                if group_finding is None and not mapping.message.ignore_unmapped_findings:
                    raise SrRefused(SrStatus.NO_RESULT, f"finding {code} is not in the mapping")
        evaluated: set[str] = set()
        for item in children:
            if item.get("ValueType") != "CODE" or _concept(item) == _FINDING:
                continue
            result = mapping.results.get(_code(item.get("ConceptCodeSequence")))
            finding = mapping.findings.get(_concept(item)) or group_finding
            if result is not None and finding is not None:
                evaluated.add(finding)
                yield _Observation(
                    finding,
                    _algorithm(item, container, ancestors),
                    result,
                    **_context(container, ancestors, mapping, zone),
                )
        # A score belongs to the group's finding; in a container without one, to the
        # single finding its evaluations name (with several, it is nobody's).
        scored = group_finding or (next(iter(evaluated)) if len(evaluated) == 1 else None)
        for item in children:
            if item.get("ValueType") != "NUM" or _concept(item) not in mapping.score.concepts:
                continue
            score = _score(item, mapping)
            if scored is not None and score is not None:
                evaluated.add(scored)
                yield _Observation(
                    scored,
                    _algorithm(item, container, ancestors),
                    score=score,
                    **_context(container, ancestors, mapping, zone),
                )
        failure = _failure(children, mapping)
        if group_finding is not None and group_finding not in evaluated and failure is not None:
            evaluated.add(group_finding)
            yield _Observation(
                group_finding,
                _algorithm(container, container, ancestors),
                status=failure[0],
                failure_reason=failure[1],
                **_context(container, ancestors, mapping, zone),
            )
        if group_finding is not None and group_finding not in evaluated:
            raise SrRefused(
                SrStatus.NO_RESULT, f"finding {group_finding} has neither an evaluation nor a score"
            )


def _failure(
    children: list[Dataset], mapping: DicomSrMapping
) -> tuple[InferenceStatus, str | None] | None:
    """The run status of a container when ``[status]`` names one other than SUCCEEDED,
    with its failure reason; None otherwise."""
    config = mapping.status
    if config.concept is None:
        return None
    status = None
    reason = None
    for item in children:
        concept = _concept(item)
        if item.get("ValueType") == "CODE" and concept == config.concept:
            status = config.values.get(_code(item.get("ConceptCodeSequence")))
        elif item.get("ValueType") == "TEXT" and concept == config.failure_reason:
            reason = str(item.get("TextValue", "")).strip() or None
    if status is None or status is InferenceStatus.SUCCEEDED:
        return None
    return status, reason


_TIME_FIELDS = {"started_at": "started_at_ms", "study_available_at": "available_at_ms"}


def _context(
    container: Dataset, ancestors: tuple[Dataset, ...], mapping: DicomSrMapping, zone: ZoneInfo
) -> dict[str, Any]:
    """What a container (else the nearest container above it) states about its results:
    the operating point (``[score] threshold_concepts``) and the ``[times]``."""
    found: dict[str, Any] = {}
    for node in (container, *ancestors):
        for child in node.get("ContentSequence") or ():
            concept, kind = _concept(child), child.get("ValueType")
            if kind == "NUM" and concept in mapping.score.threshold_concepts:
                found.setdefault("threshold", _score(child, mapping))
            elif kind == "DATETIME" and concept in mapping.times:
                name = _TIME_FIELDS[mapping.times[concept]]
                found.setdefault(name, _datetime_ms(str(child.get("DateTime", "")), zone))
    return found


def _containers(dataset: Dataset) -> Iterator[tuple[Dataset, tuple[Dataset, ...]]]:
    """Every CONTAINER of the tree below the root, with its ancestors (nearest first),
    depth first; the image library is skipped (it describes images, not results)."""
    stack: list[tuple[Dataset, tuple[Dataset, ...]]] = [(dataset, ())]
    while stack:
        node, ancestors = stack.pop()
        if len(ancestors) > _MAX_DEPTH:
            raise SrRefused(SrStatus.CANNOT_UNDERSTAND, "content tree nested too deep")
        if ancestors:
            yield node, ancestors
        for child in reversed(list(node.get("ContentSequence") or ())):
            if child.get("ValueType") == "CONTAINER" and _concept(child) != _IMAGE_LIBRARY:
                stack.append((child, (node, *ancestors)))


def _algorithm(
    item: Dataset, container: Dataset, ancestors: tuple[Dataset, ...]
) -> tuple[str, str]:
    """TID 4019 name and version nearest the item: its own, its group's, then above."""
    for node in (item, container, *ancestors):
        texts = {
            _concept(child): str(child.get("TextValue", "")).strip()
            for child in node.get("ContentSequence") or ()
            if child.get("ValueType") == "TEXT"
        }
        name, version = texts.get(_ALGORITHM_NAME), texts.get(_ALGORITHM_VERSION)
        if name or version:
            if not (name and version):
                raise SrRefused(SrStatus.NO_ALGORITHM, "algorithm identification incomplete")
            return name, version
    raise SrRefused(SrStatus.NO_ALGORITHM, "a result without algorithm identification")


def _score(item: Dataset, mapping: DicomSrMapping) -> float | None:
    """The item's value on the 0..1 scale; None for a NUM without a value."""
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return None  # TID 300 allows a NUM whose value is only a qualifier (NaN, ...)
    value = measured[0]
    unit = _code(value.get("MeasurementUnitsCodeSequence"))
    factor = mapping.score.units.get(unit)
    if factor is None:
        raise SrRefused(SrStatus.BAD_SCORE, f"score in unit {unit}, not one the mapping scales")
    raw = value.get("FloatingPointValue", value.get("NumericValue"))
    try:
        score = float(str(raw)) * factor
    except (TypeError, ValueError) as exc:
        raise SrRefused(SrStatus.BAD_SCORE, "score is not a number") from exc
    if not 0.0 <= score <= 1.0:  # NaN fails too
        raise SrRefused(SrStatus.BAD_SCORE, f"score {score:g} is outside 0..1")
    return score


def _library_value(dataset: Dataset, concept: str, value_type: str) -> str:
    """The first ``concept`` item of the image library: a CODE's code value or a TEXT's
    text (Modality 121139, Device Manufacturer 113878); '' if none."""
    stack = [
        child for child in dataset.get("ContentSequence") or () if _concept(child) == _IMAGE_LIBRARY
    ]
    depth = 0
    while stack and depth <= _MAX_DEPTH:
        depth += 1
        children = [child for node in stack for child in node.get("ContentSequence") or ()]
        for child in children:
            if child.get("ValueType") != value_type or _concept(child) != concept:
                continue
            if value_type == "TEXT":
                return str(child.get("TextValue", "")).strip()
            code = child.get("ConceptCodeSequence")
            return str(code[0].get("CodeValue", "")).strip() if code else ""
        stack = children
    return ""


def _concept(item: Dataset) -> str:
    return _code(item.get("ConceptNameCodeSequence"))


def _code(sequence: Any) -> str:
    """``code value^coding scheme designator`` of a code sequence's first item."""
    if not sequence:
        return ""
    code = sequence[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return f"{str(value).strip()}^{str(code.get('CodingSchemeDesignator', '')).strip()}"


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def _optional(dataset: Dataset, keyword: str | None) -> str | None:
    return (_text(dataset, keyword) or None) if keyword else None


def _required(dataset: Dataset, keyword: str) -> str:
    value = _text(dataset, keyword)
    if not value:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, f"{keyword} is empty")
    return value


_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


_DT = re.compile(r"^(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def _datetime_ms(text: str, zone: ZoneInfo) -> int:
    """Epoch milliseconds of a DICOM DT (``YYYYMMDD[HH[MM[SS[.F{1,6}]]]][&ZZXX]``).

    Raises:
        SrRefused: not such a value.
    """
    match = _DT.match(text.strip())
    if match is None:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, "a DATETIME item is not a DICOM DT")
    date, clock, offset = match.groups()
    return _moment_ms(date, clock or "00", offset or "", zone)


def _content_time_ms(dataset: Dataset, zone: ZoneInfo) -> int:
    """Epoch milliseconds of ContentDate + ContentTime, in TimezoneOffsetFromUTC if set."""
    return _moment_ms(
        _required(dataset, "ContentDate"),
        _required(dataset, "ContentTime"),
        _text(dataset, "TimezoneOffsetFromUTC"),
        zone,
    )


def _moment_ms(date_text: str, clock_text: str, offset_text: str, zone: ZoneInfo) -> int:
    """Epoch milliseconds of a DA, a TM and an optional ``+/-HHMM`` offset (else ``zone``)."""
    date = _DA.match(date_text)
    clock = _TM.match(clock_text)
    if date is None or clock is None:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, "ContentDate/ContentTime not DA/TM")
    tz: tzinfo = zone
    if offset_text:
        offset = _OFFSET.match(offset_text)
        if offset is None:
            raise SrRefused(SrStatus.MISSING_ATTRIBUTE, "TimezoneOffsetFromUTC not +/-HHMM")
        sign = -1 if offset[1] == "-" else 1
        try:  # timezone() refuses an offset of a day or more (+2500)
            tz = timezone(sign * timedelta(hours=int(offset[2]), minutes=int(offset[3])))
        except ValueError as exc:
            raise SrRefused(
                SrStatus.MISSING_ATTRIBUTE, f"TimezoneOffsetFromUTC out of range ({exc})"
            ) from exc
    hour, minute, second, fraction = clock.groups()
    try:
        moment = datetime(
            int(date[1]),
            int(date[2]),
            int(date[3]),
            int(hour),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
        # OverflowError: an instant of year 1 or 9999 whose offset moves it out of the
        # calendar (99991231235959-0500); found by tests/unit/fuzz.
        return int(moment.astimezone(UTC).timestamp() * 1000)
    except (ValueError, OverflowError) as exc:
        raise SrRefused(SrStatus.MISSING_ATTRIBUTE, f"content date/time invalid ({exc})") from exc


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _InFlight:
    """The associations whose C-STORE is being handled (read by :meth:`DicomScp.stop`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: Counter[int] = Counter()

    @contextmanager
    def handling(self, association: object) -> Iterator[None]:
        with self._lock:
            self._busy[id(association)] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[id(association)] -= 1

    def busy(self, association: object) -> bool:
        with self._lock:
            return self._busy[id(association)] > 0


@dataclass(frozen=True, slots=True)
class _StoreHandler:
    """Answers one C-STORE; runs in the association's thread, delivers on ``loop``."""

    mapping: DicomSrMapping
    delivery: Delivery
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    clock: Callable[[], int]
    validator: EventValidator | None
    in_flight: _InFlight
    metrics: GatewayMetrics | None = None

    def __call__(self, event: evt.Event) -> Dataset:
        started = time.perf_counter()
        try:
            with self.in_flight.handling(event.assoc):
                return self._answer(event)
        finally:
            if self.metrics is not None:
                elapsed = time.perf_counter() - started
                self.metrics.request_duration.labels("dicom_sr").observe(elapsed)

    def _answer(self, event: evt.Event) -> Dataset:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        # Provenance (DESIGN §6): the calling AE title and the connection.
        source = f"dicom://{calling_ae}@{requestor.address}:{requestor.port}"
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            if str(dataset.get("SOPClassUID", "")) != str(event.request.AffectedSOPClassUID):
                raise SrRefused(
                    SrStatus.SOP_CLASS_MISMATCH, "dataset SOP class is not the context's"
                )
            events = self._validated(inference_events(dataset, self.mapping))
        except SrRefused as refused:
            return self._refuse(event, refused, source)
        except Exception as exc:  # pydicom: the bytes are not a dataset of this syntax
            undecodable = SrRefused(
                SrStatus.CANNOT_UNDERSTAND, f"dataset not decodable ({type(exc).__name__})"
            )
            return self._refuse(event, undecodable, source)
        try:
            control_id = str(dataset.SOPInstanceUID)
            self._run(self.delivery.deliver(events, source=source, control_id=control_id))
        except Exception as exc:
            # Whatever went wrong, the events are not known to be on Kafka: 0xA700 keeps
            # the instance at the sender, which retries (nothing lost). A DeliveryError or
            # a timeout is transient; anything else (an EncodeError) is a bug to fix.
            _log_not_stored(f"DICOM SR from {source} not delivered", exc)
            return _status(SrStatus.OUT_OF_RESOURCES, "events not stored; retry later")
        return _status(SrStatus.SUCCESS)

    def _validated(self, events: list[InferenceEvent]) -> list[Event]:
        if self.validator is None:
            return list(events)
        try:
            return [self.validator.validate(e) for e in events]
        except ValidationFailedError as exc:
            raise SrRefused(SrStatus.INVALID_EVENT, f"not a valid event: {exc}") from exc

    def _refuse(self, event: evt.Event, refused: SrRefused, source: str) -> Dataset:
        study_uid = _attribute(event, "StudyInstanceUID")
        control_id = _attribute(event, "SOPInstanceUID")
        where = source if control_id is None else f"{source} SOP instance {control_id}"
        status = f"0x{refused.status:04X}"
        letter = DeadLetter(
            reason=refused.dead_letter_reason,
            message=f"DICOM SR over C-STORE, {where}: refused with {status}: {refused.reason}",
            key=study_uid.encode() if study_uid else None,
            value=event.encoded_dataset(include_meta=True),  # a DICOM Part 10 file
            headers=(
                *(Header(key=k, value=v) for k, v in provenance_headers(source, control_id)),
                Header(key="dicom.status", value=status.encode()),
                Header(
                    key="dicom.sop_class_uid", value=str(event.request.AffectedSOPClassUID).encode()
                ),
                Header(
                    key="dicom.transfer_syntax", value=str(event.context.transfer_syntax).encode()
                ),
            ),
            study_uid=study_uid,
            received_at_ms=self.clock(),
        )
        try:
            self._run(self.delivery.dead_letter(letter))
        except Exception as exc:  # not dead-lettered: the sender must keep it
            _log_not_stored(f"DICOM SR from {source} refused, dead letter not written", exc)
            return _status(SrStatus.OUT_OF_RESOURCES, "refused, but not recorded; retry later")
        _LOG.info("DICOM SR from %s refused: %s", source, refused)
        return _status(refused.status, refused.reason)

    def _run(self, coroutine: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            future.result(self.timeout_s)
        except BaseException:
            future.cancel()
            raise


def _log_not_stored(what: str, exc: Exception) -> None:
    if isinstance(exc, DeliveryError | TimeoutError):
        _LOG.warning("%s (%s): answered 0xA700", what, exc)
    else:
        _LOG.exception("%s: answered 0xA700", what)


def _attribute(event: evt.Event, keyword: str) -> str | None:
    """A top-level text attribute of the C-STORE's dataset; None if absent or unreadable."""
    try:
        return str(event.dataset.get(keyword, "")).strip() or None
    except Exception:  # an undecodable dataset names nothing
        return None


def _status(status: int, comment: str = "") -> Dataset:
    response = Dataset()
    response.Status = status
    if comment:
        response.ErrorComment = comment[:64]  # LO: 64 characters at most
    return response


def start_dicom_scp(
    mapping: DicomSrMapping,
    delivery: Delivery,
    loop: asyncio.AbstractEventLoop,
    *,
    host: str,
    port: int,
    ae_title: str = "IMGOV",
    timeout_s: float = 30.0,
    validator: EventValidator | None = None,
    clock: Callable[[], int] = _wall_clock_ms,
    metrics: GatewayMetrics | None = None,
) -> ThreadedAssociationServer:
    """Starts the C-STORE/C-ECHO SCP on ``host:port`` (0: any free port; the bound one is
    ``server.server_address[1]``) in pynetdicom's threads and returns at once.

    ``loop`` is the running event loop that ``delivery`` belongs to; each C-STORE waits
    at most ``timeout_s`` for it. ``validator`` applies the contract rules to every event
    before delivery (None: the models' type checks only); ``clock`` gives dead letters
    their ``received_at_ms``; ``metrics`` times each C-STORE (protocol ``dicom_sr``).
    Stop with :meth:`DicomScp.stop` (or ``server.shutdown()``).
    An association is accepted whatever called AE title it names, as most PACS do.

    Raises:
        OSError: the address cannot be bound.
    """
    ae = AE(ae_title=ae_title)
    for sop_class in SR_STORAGE_CLASSES:
        ae.add_supported_context(sop_class, DEFAULT_TRANSFER_SYNTAXES)
    ae.add_supported_context(_VERIFICATION)
    handler = _StoreHandler(
        mapping, delivery, loop, timeout_s, clock, validator, _InFlight(), metrics
    )
    server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("pynetdicom returned no server")
    return server


class DicomScp:
    """A started SCP as ``imgov gateway`` runs its listeners (``stop`` as MllpListener's).

    Args:
        server: what :func:`start_dicom_scp` returned.
    """

    def __init__(self, server: ThreadedAssociationServer) -> None:
        self.server = server

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server.server_address[1])

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Stops accepting, lets every C-STORE in flight be delivered and answered (this
        loop must keep running meanwhile), and aborts each association once it is idle,
        or when ``timeout_s`` ran out. Returns False when a C-STORE was still in flight
        then: its sender was not answered and sends the instance again."""
        # shutdown() blocks until the accept loop has ended: not on this loop's thread.
        await asyncio.to_thread(self.server.shutdown)
        bound = self.server.get_handlers(evt.EVT_C_STORE)  # (handler, args): an intervention
        handler = bound[0] if isinstance(bound, tuple) else None
        in_flight = handler.in_flight if isinstance(handler, _StoreHandler) else _InFlight()
        deadline = time.monotonic() + timeout_s
        open_ = self.server.active_associations
        while open_ and time.monotonic() < deadline:
            for association in open_:
                if not in_flight.busy(association):  # between requests: nothing unanswered
                    await asyncio.to_thread(association.abort)  # abort() joins its threads
            await asyncio.sleep(0.05)
            open_ = [a for a in open_ if a.is_alive()]
        unanswered = [a for a in open_ if in_flight.busy(a)]
        for association in open_:
            await asyncio.to_thread(association.abort)
        return not unanswered
