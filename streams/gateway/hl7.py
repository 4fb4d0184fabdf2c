"""HL7 v2 ORU^R01 radiology results -> ReportEvent (DESIGN §3, §11).

A RIS sends one ORU^R01 per report status change; each OBR group of the message (the
OBR and the OBX segments after it) is one :class:`~schemas.events.ReportEvent`. Which
field holds what is configuration (:class:`Hl7Mapping`, the shipped ``hl7.toml``
documents every entry): OBR-25 through a status table, coded OBX observations through
a code -> finding map and a value -> label map (OBX-17, the observation method, through
a label method map), a time-valued OBX through a code -> report time map. python-hl7
parses the message and resolves escape sequences; this module only maps fields.

``report_events`` either returns every event of a message or raises :class:`Hl7Refused`
with the HL7 error (table 0357 code, location, a reason without identifiers) that the
gateway answers in the ACK's ERR segment and writes to the dead-letter topic with the
message's bytes. The event ids are ``hl7:<sending application>:<control id>:<OBR set
id>``, so a message sent twice (an MLLP retry after a lost ACK) gives the same events,
which the pipeline de-duplicates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import hl7  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.events import Finding, Label, LabelMethod, ReportEvent, ReportStatus
from streams.gateway.mapping import load_mapping

__all__ = [
    "Hl7Error",
    "Hl7Mapping",
    "Hl7Refused",
    "acknowledgement",
    "load_hl7_mapping",
    "parse_message",
    "report_events",
]

_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class Hl7Error:
    """HL7 table 0357 (message error condition codes) used in ERR segments."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_VERSION = "203"


class Hl7Refused(Exception):
    """A message imgov cannot accept: answered AE (or AR) and dead-lettered.

    Attributes:
        code: HL7 table 0357 code.
        location: where, as ``SEG-field`` (empty for the message as a whole).
        reason: what is wrong, never the value of an identifier.
        reject: AR (the message itself is unacceptable: type, version, syntax) rather
            than AE (its content is).
    """

    def __init__(self, code: str, location: str, reason: str, *, reject: bool = False) -> None:
        super().__init__(f"{location + ': ' if location else ''}{reason}")
        self.code = code
        self.location = location
        self.reason = reason
        self.reject = reject


class _Fields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = "MSH-4.1"
    study_uid: str = "ZDS-1.1"
    accession_number: str | None = "OBR-18.1"
    patient_id: str | None = "PID-3.1"
    procedure_code: str | None = "OBR-4.1"
    modality: str | None = "OBR-24.1"
    body_part: str | None = "OBR-15.4"
    report_id: str = "OBR-3.1"
    parent_report_id: str | None = "OBR-29.2"
    interpreter_id: str | None = "OBR-32.1"
    exam_completed_at: str | None = "OBR-8"
    occurred_at: str = "OBR-22"

    @field_validator("*")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and not _PATH.match(value):
            raise ValueError(f"not a field path like OBR-25 or PID-3.1: {value!r}")
        return value


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    versions: tuple[str, ...] = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
    timezone: str = "UTC"


class Hl7Mapping(BaseModel):
    """Where the fields of a ReportEvent are in an ORU^R01 (see ``hl7.toml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: _Message = Field(default_factory=_Message)
    fields: _Fields = Field(default_factory=_Fields)
    sites: dict[str, str] = Field(default_factory=dict)
    result_status: dict[str, ReportStatus] = Field(default_factory=dict)
    findings: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, Label] = Field(default_factory=dict)
    label_methods: dict[str, LabelMethod] = Field(default_factory=dict)
    observation_times: dict[str, Literal["critical_result_communicated_at"]] = Field(
        default_factory=dict
    )

    @field_validator("message")
    @classmethod
    def _known_zone(cls, value: _Message) -> _Message:
        ZoneInfo(value.timezone)  # raises for an unknown zone
        return value


def load_hl7_mapping(path: Path | None = None) -> Hl7Mapping:
    """Reads a mapping file (TOML); without ``path``, the shipped ``hl7.toml``.

    Raises:
        ValueError: the file is not valid TOML or not a valid mapping (names the entry).
    """
    return load_mapping(Hl7Mapping, "hl7.toml", path, "HL7")


def parse_message(data: bytes | str) -> hl7.Message:
    """Parses one HL7 v2 message (segments ended by CR, LF or CRLF).

    Raises:
        Hl7Refused: not an HL7 v2 message (AR).
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    lines = text.replace("\r\n", "\r").replace("\n", "\r").strip("\x0b\x1c").split("\r")
    segments = [line for line in lines if line.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise Hl7Refused(Hl7Error.SEGMENT_SEQUENCE, "MSH", "no MSH segment", reject=True)
    separator = segments[0][3]
    for n, segment in enumerate(segments, 1):
        if not _SEGMENT_NAME.match(segment.split(separator, 1)[0]):
            raise Hl7Refused(
                Hl7Error.SEGMENT_SEQUENCE, "", f"segment {n} has no valid name", reject=True
            )
    try:
        return hl7.parse("\r".join(segments))
    except Exception as exc:  # python-hl7 raises several types for malformed text
        raise Hl7Refused(
            Hl7Error.SEGMENT_SEQUENCE,
            "",
            f"not parseable as HL7 v2 ({type(exc).__name__})",
            reject=True,
        ) from exc


@dataclass(frozen=True, slots=True)
class _Group:
    obr: Any
    observations: tuple[Any, ...]
    segments: dict[str, Any]
    """The report's own segments: the latest of each before its OBR (its patient's PID,
    its ORC) and the first Z-segment of each name after it (a ZDS)."""


def report_events(message: hl7.Message, mapping: Hl7Mapping) -> list[ReportEvent]:
    """The ReportEvent of every OBR group of an ORU^R01, in message order.

    Raises:
        Hl7Refused: another message type or version (AR), or an OBR group that cannot
            become a valid ReportEvent (AE): a required field empty, an OBR-25 the
            mapping does not list, a time that is not an HL7 DTM.
    """
    msh = message.segment("MSH")
    kind = (_value(msh, "MSH-9.1"), _value(msh, "MSH-9.2"))
    if kind != ("ORU", "R01"):
        raise Hl7Refused(
            Hl7Error.UNSUPPORTED_MESSAGE_TYPE,
            "MSH-9",
            f"{'^'.join(kind)} is not ORU^R01",
            reject=True,
        )
    version = _value(msh, "MSH-12.1")
    if version not in mapping.message.versions:
        raise Hl7Refused(
            Hl7Error.UNSUPPORTED_VERSION,
            "MSH-12",
            f"version {version or '(none)'} not accepted",
            reject=True,
        )
    zone = ZoneInfo(mapping.message.timezone)
    control_id = _value(msh, "MSH-10")
    if not control_id:
        raise Hl7Refused(Hl7Error.REQUIRED_FIELD_MISSING, "MSH-10", "no message control id")
    sent_at = _value(msh, "MSH-7")
    groups = _groups(message)
    if not groups:
        raise Hl7Refused(Hl7Error.SEGMENT_SEQUENCE, "OBR", "no OBR segment")
    return [
        _report(message, group, n, mapping, zone, control_id, sent_at)
        for n, group in enumerate(groups, 1)
    ]


def _groups(message: hl7.Message) -> list[_Group]:
    groups: list[_Group] = []
    obr: Any = None
    observations: list[Any] = []
    before: dict[str, Any] = {}  # the latest of each segment so far (PID, ORC, ...)
    at_obr: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for segment in message:
        name = str(segment[0])
        if name == "OBR":
            if obr is not None:
                groups.append(_Group(obr, tuple(observations), {**at_obr, **own}))
            obr, observations, at_obr, own = segment, [], dict(before), {}
        elif name == "OBX" and obr is not None:
            observations.append(segment)
        elif obr is not None and name.startswith("Z"):
            own.setdefault(name, segment)  # a site's Z-segment after an OBR is its report's
        else:
            before[name] = segment
    if obr is not None:
        groups.append(_Group(obr, tuple(observations), {**at_obr, **own}))
    return groups


def _report(
    message: hl7.Message,
    group: _Group,
    n: int,
    mapping: Hl7Mapping,
    zone: ZoneInfo,
    control_id: str,
    sent_at: str,
) -> ReportEvent:
    fields = mapping.fields

    def get(path: str | None) -> str | None:
        if path is None:
            return None
        name = path[:3]
        # The report's own segment (two patients, two PIDs; two reports, two ZDS), else
        # the message's first (a ZDS after the last report, for every report).
        segment = (
            group.obr if name == "OBR" else group.segments.get(name) or _segment(message, name)
        )
        value = None if segment is None else _value(segment, path)
        return value or None

    def required(name: str, path: str) -> str:
        value = get(path)
        if value is None:
            raise Hl7Refused(Hl7Error.REQUIRED_FIELD_MISSING, path, f"{name} is empty")
        return value

    raw_status = required("the result status", "OBR-25")
    status = mapping.result_status.get(raw_status)
    if status is None:
        raise Hl7Refused(
            Hl7Error.TABLE_VALUE_NOT_FOUND,
            "OBR-25",
            f"result status {raw_status!r} is not a report status the mapping accepts",
        )
    occurred_path = fields.occurred_at
    occurred = get(occurred_path)
    if occurred is None:
        occurred, occurred_path = sent_at, "MSH-7"
    if not occurred:
        raise Hl7Refused(Hl7Error.REQUIRED_FIELD_MISSING, occurred_path, "no time of the result")
    facility = required("the sending facility", fields.site_id)
    set_id = _value(group.obr, "OBR-1") or str(n)
    completed = get(fields.exam_completed_at)
    try:
        return ReportEvent(
            event_id=f"hl7:{_value(message.segment('MSH'), 'MSH-3.1')}:{control_id}:{set_id}",
            occurred_at_ms=_epoch_ms(occurred, zone, occurred_path),
            site_id=mapping.sites.get(facility, facility),
            study_uid=required("the study instance UID", fields.study_uid),
            accession_number=get(fields.accession_number),
            patient_id=get(fields.patient_id),
            modality=get(fields.modality),
            body_part=get(fields.body_part),
            procedure_code=get(fields.procedure_code),
            report_id=required("the report id", fields.report_id),
            parent_report_id=get(fields.parent_report_id),
            status=status,
            hl7_result_status=raw_status,
            interpreter_id=get(fields.interpreter_id),
            exam_completed_at_ms=(
                None
                if completed is None or fields.exam_completed_at is None
                else _epoch_ms(completed, zone, fields.exam_completed_at)
            ),
            findings=_findings(group.observations, mapping),
            critical_result_communicated_at_ms=_observation_time(
                group.observations, mapping, zone, "critical_result_communicated_at"
            ),
        )
    except ValidationError as exc:  # not expected: every field above is typed already
        raise Hl7Refused(Hl7Error.DATA_TYPE, "OBR", f"not a valid report: {exc}") from exc


def _findings(observations: tuple[Any, ...], mapping: Hl7Mapping) -> tuple[Finding, ...]:
    """Labelled findings of the coded OBX segments the mapping knows; the last one of a
    finding wins (a corrected observation follows the one it corrects)."""
    found: dict[str, tuple[Label, LabelMethod]] = {}
    for obx in observations:
        if _value(obx, "OBX-2") not in ("CE", "CWE", "CNE", "ST", "ID"):
            continue  # report text, numbers: not a label
        finding = mapping.findings.get(_coded(obx, 3))
        if finding is None:
            continue
        label = mapping.labels.get(_coded(obx, 5)) or mapping.labels.get(_extract(obx, 5, 1))
        if label is not None:
            # OBX-17 (observation method) says how the label was made; none listed:
            # structured reporting, the label is the coded value itself.
            method = mapping.label_methods.get(_coded(obx, 17)) or mapping.label_methods.get(
                _extract(obx, 17, 1), LabelMethod.STRUCTURED
            )
            found[finding] = (label, method)
    return tuple(
        Finding(finding_code=code, label=label, label_method=method)
        for code, (label, method) in sorted(found.items())
    )


def _observation_time(
    observations: tuple[Any, ...], mapping: Hl7Mapping, zone: ZoneInfo, name: str
) -> int | None:
    """The time an OBX of value type TS/DTM listed in ``[observation_times]`` as ``name``
    carries (the last such OBX wins, as for findings); None without one.

    Raises:
        Hl7Refused: its value is not an HL7 DTM.
    """
    found: int | None = None
    for n, obx in enumerate(observations, 1):
        if _value(obx, "OBX-2") not in ("TS", "DTM", "DT"):
            continue
        if mapping.observation_times.get(_coded(obx, 3)) != name:
            continue
        value = _extract(obx, 5, 1)
        if value:
            found = _epoch_ms(value, zone, f"OBX({n})-5")
    return found


def _coded(segment: Any, field: int) -> str:
    """``code^coding system`` of a coded element (CE/CWE/CNE: components 1 and 3)."""
    return f"{_extract(segment, field, 1)}^{_extract(segment, field, 3)}"


def _segment(message: hl7.Message, name: str) -> Any:
    try:
        return message.segment(name)
    except KeyError:
        return None


def _value(segment: Any, path: str) -> str:
    """The (unescaped) value at ``SEG-field[.component]`` of ``segment``; '' if absent."""
    match = _PATH.match(path)
    if match is None:
        raise ValueError(f"not a field path: {path!r}")
    return _extract(segment, int(match[2]), int(match[3] or 1))


def _extract(segment: Any, field: int, component: int) -> str:
    """First repetition's component of a field, unescaped and stripped; '' if absent
    (python-hl7 raises IndexError for a path that ends early, as ``ST`` where a
    coded element was expected)."""
    try:
        value = segment.extract_field(field_num=field, repeat_num=1, component_num=component)
    except (IndexError, KeyError, ValueError, TypeError):
        return ""
    return str(value).strip()


_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def _epoch_ms(text: str, zone: ZoneInfo, path: str) -> int:
    """Epoch milliseconds of an HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``)."""
    match = _DTM.match(text)
    if match is None:
        raise Hl7Refused(Hl7Error.DATA_TYPE, path, "not an HL7 date/time (DTM)")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    tz: Any = zone
    try:
        if offset:
            sign = -1 if offset[0] == "-" else 1
            # timezone() raises ValueError for an offset of a day or more (-5900).
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
        # OverflowError: an instant of year 1 or 9999 whose offset moves it out of the
        # calendar (00010101+0500); found by tests/unit/fuzz.
        return int(moment.astimezone(UTC).timestamp() * 1000)
    except (ValueError, OverflowError) as exc:
        raise Hl7Refused(Hl7Error.DATA_TYPE, path, f"not a valid date/time ({exc})") from exc


_ERROR_TEXT = {
    Hl7Error.SEGMENT_SEQUENCE: "Segment sequence error",
    Hl7Error.REQUIRED_FIELD_MISSING: "Required field missing",
    Hl7Error.DATA_TYPE: "Data type error",
    Hl7Error.TABLE_VALUE_NOT_FOUND: "Table value not found",
    Hl7Error.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    Hl7Error.UNSUPPORTED_VERSION: "Unsupported version id",
}


def acknowledgement(message: hl7.Message, error: Hl7Refused | None = None) -> str:
    """The ACK of ``message``: AA, or AE/AR with an ERR segment in the v2.5 layout
    (ERR-2 location, ERR-3 the table 0357 code, ERR-4 severity E, ERR-8 the reason)."""
    if error is None:
        return str(message.create_ack("AA")).rstrip("\r")
    ack = str(message.create_ack("AR" if error.reject else "AE")).rstrip("\r")
    location = ""
    if error.location:
        segment, _, field = error.location.partition("-")
        location = f"{segment}^1^{field}" if field else segment
    text = message.escape(error.reason)
    err = f"ERR||{location}|{error.code}^{_ERROR_TEXT[error.code]}^HL70357|E||||{text}"
    return f"{ack}\r{err}"
