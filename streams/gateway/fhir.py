"""FHIR R4 over HTTP -> ReportEvent and AlertEvent (DESIGN §3, §11).

A RIS or a FHIR server POSTs a DiagnosticReport (one report status change), a
Communication (one state change of an AI alert), or a Bundle of them: a transaction or
batch, a collection, a history Bundle, or a subscription notification (R4B
``subscription-notification``, or the R4 Subscriptions Backport's ``history`` Bundle
that starts with a Parameters resource). fhir.resources (its R4B models, which read R4
content of these resource types) parses and validates the JSON; this module maps. Which
element holds what is configuration (:class:`FhirMapping`; the shipped ``fhir.toml``
documents every entry and the HL7 v2 field of ``hl7.toml`` that carries the same fact,
so one report sent both ways maps to the same event apart from its id).

Pure functions, in the order the listener (``streams.gateway.fhir_http``) calls them:
:func:`parse_resource` (bytes -> a validated resource), :func:`resource_events`
(resource -> contract events); :func:`parse_events` is both, for the benchmark. Each
either returns or raises :class:`FhirRefused` with the OperationOutcome issue type and a
diagnostics text without identifiers (:func:`operation_outcome` makes the resource).
A Bundle is taken whole or refused whole (a batch too, like a transaction), so that
nothing of a message is half-delivered. Event ids are made of the facts of the status
change (``fhir:<site>:<report id>:<status>:<time>``), so a resource sent twice gives the
same events, which the pipeline de-duplicates.

Exceptions::

    ImgovError (schemas.errors)
    └── FhirRefused      the input cannot be accepted: 4xx with an OperationOutcome,
                         dead-lettered with its bytes
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ImgovError
from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Event,
    Finding,
    Label,
    LabelMethod,
    Priority,
    ReportEvent,
    ReportStatus,
)
from schemas.records import DeadLetterReason
from streams.gateway.mapping import load_mapping

__all__ = [
    "FhirIssue",
    "FhirMapping",
    "FhirRefused",
    "load_fhir_mapping",
    "operation_outcome",
    "parse_events",
    "parse_resource",
    "resource_events",
]

_MODELS: dict[str, type[Resource]] = {
    "Bundle": Bundle,
    "Communication": Communication,
    "DiagnosticReport": DiagnosticReport,
}
_BUNDLE_TYPES = frozenset(
    {"transaction", "batch", "collection", "history", "subscription-notification"}
)
_DICOM_UID = "urn:dicom:uid"


class FhirIssue:
    """OperationOutcome issue types (FHIR value set ``issue-type``) this gateway answers."""

    STRUCTURE = "structure"
    INVALID = "invalid"
    REQUIRED = "required"
    VALUE = "value"
    CODE_INVALID = "code-invalid"
    NOT_FOUND = "not-found"
    NOT_SUPPORTED = "not-supported"
    TOO_LONG = "too-long"
    TRANSIENT = "transient"
    EXCEPTION = "exception"


_HTTP_STATUS = {
    FhirIssue.STRUCTURE: 400,
    FhirIssue.INVALID: 400,
    FhirIssue.NOT_SUPPORTED: 400,
    FhirIssue.REQUIRED: 422,
    FhirIssue.VALUE: 422,
    FhirIssue.CODE_INVALID: 422,
    FhirIssue.NOT_FOUND: 422,
    FhirIssue.TOO_LONG: 413,
}


class FhirRefused(ImgovError):
    """An input imgov cannot accept: answered 4xx with an OperationOutcome, dead-lettered.

    Attributes:
        code: the OperationOutcome issue type (:class:`FhirIssue`).
        diagnostics: what is wrong, never the value of an identifier.
        expression: FHIRPath of the offending element (``Bundle.entry[1].resource.status``),
            None for the input as a whole.
        reason: the dead-letter reason: UNDECODABLE for bytes that are not a JSON
            resource, OVERSIZED, else VALIDATION_FAILED.
        http_status: 400 (not valid FHIR), 422 (valid FHIR the mapping cannot use),
            413, 415 or 404.
    """

    def __init__(
        self,
        code: str,
        diagnostics: str,
        *,
        expression: str | None = None,
        reason: DeadLetterReason = DeadLetterReason.VALIDATION_FAILED,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{expression + ': ' if expression else ''}{diagnostics}")
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression
        self.reason = reason
        self.http_status = http_status or _HTTP_STATUS.get(code, 400)


# -- mapping ------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Defaults(_Frozen):
    timezone: str = "UTC"
    site_id: str = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (
            ZoneInfoNotFoundError,
            ValueError,
        ) as exc:  # a KeyError: pydantic would not catch it
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class _Extensions(_Frozen):
    site_id: str = "urn:imgov:fhir:site-id"
    parent_report: str = "http://hl7.org/fhir/StructureDefinition/diagnosticReport-addendumOf"
    priority_before: str = "urn:imgov:fhir:priority-before"


class _IdentifierRule(_Frozen):
    types: tuple[str, ...] = ()
    systems: tuple[str, ...] = ()
    first: bool = True
    resource_id: bool = False


_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203|"


class _Identifiers(_Frozen):
    report_id: _IdentifierRule = _IdentifierRule(types=(_V2_0203 + "FILL",), resource_id=True)
    accession_number: _IdentifierRule = _IdentifierRule(types=(_V2_0203 + "ACSN",), first=False)
    patient_id: _IdentifierRule = _IdentifierRule(types=(_V2_0203 + "MR",))
    interpreter_id: _IdentifierRule = _IdentifierRule()
    alert_id: _IdentifierRule = _IdentifierRule(resource_id=True)
    recipient_id: _IdentifierRule = _IdentifierRule()


class _Codes(_Frozen):
    procedure_systems: tuple[str, ...] = ()
    modality_category_system: str = "http://terminology.hl7.org/CodeSystem/v2-0074"


class _Conclusion(_Frozen):
    finding: str
    label: Label


class _Communication(_Frozen):
    default_channel: AlertChannel = AlertChannel.OTHER
    inference_event_system: str = "urn:imgov:fhir:inference-event-id"
    states: dict[str, AlertState] = Field(default_factory=dict)
    status: dict[str, AlertState] = Field(default_factory=dict)
    channels: dict[str, AlertChannel] = Field(default_factory=dict)
    priority: dict[str, Priority] = Field(default_factory=dict)


class FhirMapping(_Frozen):
    """Where the fields of the contract events are in FHIR resources (see ``fhir.toml``)."""

    defaults: _Defaults = Field(default_factory=_Defaults)
    extensions: _Extensions = Field(default_factory=_Extensions)
    sites: dict[str, str] = Field(default_factory=dict)
    identifiers: _Identifiers = Field(default_factory=_Identifiers)
    codes: _Codes = Field(default_factory=_Codes)
    report_status: dict[str, ReportStatus] = Field(default_factory=dict)
    conclusion_codes: dict[str, _Conclusion] = Field(default_factory=dict)
    observations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, Label] = Field(default_factory=dict)
    communication: _Communication = Field(default_factory=_Communication)


def load_fhir_mapping(path: Path | None = None) -> FhirMapping:
    """Reads a mapping file (TOML); without ``path``, the shipped ``fhir.toml``.

    Raises:
        ValueError: the file is not valid TOML or not a valid mapping (names the entry).
    """
    return load_mapping(FhirMapping, "fhir.toml", path, "FHIR")


# -- parsing ------------------------------------------------------------------------------


def parse_resource(data: bytes, accept: Iterable[str] = tuple(_MODELS)) -> Resource:
    """Parses and validates one FHIR JSON resource of a type in ``accept``.

    Raises:
        FhirRefused: not UTF-8 JSON (structure, UNDECODABLE), not a resource of an
            accepted type (not-supported), or not valid FHIR R4 (invalid).
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FhirRefused(
            FhirIssue.STRUCTURE,
            f"not parseable as UTF-8 JSON ({exc.msg} at byte {exc.pos})",
            reason=DeadLetterReason.UNDECODABLE,
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise FhirRefused(
            FhirIssue.STRUCTURE,
            "not a FHIR resource: a JSON object with a resourceType is expected",
            reason=DeadLetterReason.UNDECODABLE,
        )
    kind = document["resourceType"]
    accepted = tuple(accept)
    if kind not in accepted:
        shown = kind if kind.isalnum() and len(kind) <= 64 else "(unreadable)"
        raise FhirRefused(
            FhirIssue.NOT_SUPPORTED,
            f"resource type {shown} is not accepted here (expected {' or '.join(accepted)})",
            expression=None,
        )
    try:
        return _MODELS[kind].model_validate(document)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        raise FhirRefused(
            FhirIssue.INVALID,
            f"not valid FHIR: {error['msg']} ({exc.error_count()} error(s))",
            expression=_fhirpath(kind, error["loc"]),
        ) from exc
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # fhir-core validators raise these for some malformed elements.
        raise FhirRefused(
            FhirIssue.INVALID, f"not valid FHIR ({type(exc).__name__})", expression=kind
        ) from exc


def _fhirpath(kind: str, loc: Sequence[int | str]) -> str:
    path = kind
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_events(data: bytes, mapping: FhirMapping) -> list[Event]:
    """The contract events of one request body (parse, validate, map).

    Raises:
        FhirRefused: see :func:`parse_resource` and :func:`resource_events`.
    """
    return resource_events(parse_resource(data), mapping)


# -- resolution ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """What a reference can resolve to: the Bundle's entries and the referrer's
    contained resources."""

    by_url: dict[str, Any] = field(default_factory=dict)
    by_type_id: dict[str, Any] = field(default_factory=dict)
    timestamp: Any = None

    @classmethod
    def of(cls, bundle: Bundle | None) -> _Context:
        context = cls(timestamp=None if bundle is None else bundle.timestamp)
        for entry in (bundle.entry or []) if bundle is not None else []:
            resource: Any = entry.resource
            if resource is None:
                continue
            kind = resource.get_resource_type()
            if entry.fullUrl:
                context.by_url[entry.fullUrl] = resource
                # A RESTful fullUrl ([base]/Type/id) names the resource as "Type/id" does.
                parts = entry.fullUrl.split("/_history/", 1)[0].rstrip("/").split("/")
                if len(parts) >= 2 and parts[-2] == kind:
                    context.by_type_id.setdefault(f"{kind}/{parts[-1]}", resource)
            if resource.id:
                context.by_type_id[f"{kind}/{resource.id}"] = resource
        return context

    def resolve(self, reference: Any, referrer: Any) -> Any:
        """The resource ``reference`` points at, or None (logical or external)."""
        target = getattr(reference, "reference", None)
        if not target:
            return None
        if target.startswith("#"):
            return next((c for c in referrer.contained or [] if c.id == target[1:]), None)
        if target in self.by_url:
            return self.by_url[target]
        path = target.split("/_history/", 1)[0]
        parts = path.rstrip("/").split("/")
        return self.by_type_id.get("/".join(parts[-2:])) if len(parts) >= 2 else None


def _identifier(resource: Any, rule: _IdentifierRule) -> str | None:
    identifiers = [i for i in getattr(resource, "identifier", None) or [] if i.value]
    for wanted in rule.types:
        for identifier in identifiers:
            if wanted in _codings(identifier.type):
                return str(identifier.value)
    for identifier in identifiers:
        if identifier.system in rule.systems:
            return str(identifier.value)
    if rule.first and identifiers:
        return str(identifiers[0].value)
    if rule.resource_id and getattr(resource, "id", None):
        return str(resource.id)
    return None


def _reference_identifier(
    reference: Any, referrer: Any, ctx: _Context, rule: _IdentifierRule
) -> str | None:
    target = ctx.resolve(reference, referrer)
    if target is not None:
        return _identifier(target, rule)
    logical = getattr(reference, "identifier", None)
    if logical is None or not logical.value:
        return None
    # The rule as for a resource's identifiers: its type, else its system, else (when
    # the rule allows it) any. An untyped placer-order number is no accession number.
    if (
        set(rule.types) & set(_codings(logical.type))
        or logical.system in rule.systems
        or rule.first
    ):
        return str(logical.value)
    return None


def _codings(concept: Any) -> list[str]:
    """``system|code`` of every coding of a CodeableConcept (or a list of them)."""
    if concept is None:
        return []
    concepts = concept if isinstance(concept, list) else [concept]
    return [f"{c.system or ''}|{c.code}" for cc in concepts for c in cc.coding or [] if c.code]


def _study_uids(references: Iterable[Any], referrer: Any, ctx: _Context) -> list[tuple[str, Any]]:
    """(StudyInstanceUID, the ImagingStudy or None) of every study reference that has one."""
    found: list[tuple[str, Any]] = []
    for reference in references:
        study = ctx.resolve(reference, referrer)
        if study is not None and study.get_resource_type() != "ImagingStudy":
            continue
        identifiers = (study.identifier or []) if study is not None else [reference.identifier]
        for identifier in identifiers:
            if identifier is not None and identifier.system == _DICOM_UID and identifier.value:
                uid = str(identifier.value).removeprefix("urn:oid:")
                if uid not in (u for u, _ in found):
                    found.append((uid, study))
                break
    return found


def _extension(resource: Any, url: str) -> Any:
    return next((e for e in resource.extension or [] if e.url == url), None)


def _site(resource: Any, mapping: FhirMapping, where: str) -> str:
    raw: str | None = None
    extension = _extension(resource, mapping.extensions.site_id)
    if extension is not None:
        for name in ("valueString", "valueCode", "valueId", "valueUri"):
            if getattr(extension, name, None):
                raw = str(getattr(extension, name))
                break
        if raw is None and extension.valueIdentifier is not None:
            raw = extension.valueIdentifier.value
    if raw is None and resource.meta is not None and resource.meta.source:
        raw = str(resource.meta.source)
    if raw:
        return mapping.sites.get(raw, raw)
    if mapping.defaults.site_id:
        return mapping.defaults.site_id
    raise FhirRefused(
        FhirIssue.REQUIRED,
        f"no site: neither the extension {mapping.extensions.site_id} nor meta.source, "
        "and the mapping has no default site_id",
        expression=where,
    )


def _epoch_ms(value: Any, zone: ZoneInfo, where: str) -> int:
    """Epoch milliseconds of a FHIR instant or dateTime; a date or a partial date
    (``2026``, ``2026-01``) is its first moment in ``zone`` (fhir.resources refuses a
    time without an offset, as the standard does).

    Raises:
        FhirRefused: a value no datetime can hold (the standard's patterns allow some).
    """
    try:
        if isinstance(value, datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=zone)
        elif isinstance(value, date):
            moment = datetime(value.year, value.month, value.day, tzinfo=zone)
        else:
            parts = [int(p) for p in str(value).split("-")]
            moment = datetime(parts[0], parts[1] if len(parts) > 1 else 1, 1, tzinfo=zone)
        return (moment - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:
        raise FhirRefused(FhirIssue.VALUE, "not a usable date/time", expression=where) from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- mapping resources to events -----------------------------------------------------------


def resource_events(resource: Resource, mapping: FhirMapping) -> list[Event]:
    """The contract events of one parsed resource, in document order.

    A DiagnosticReport gives one ReportEvent per ImagingStudy it references; a
    Communication one AlertEvent per study it is about; a Bundle the events of every
    DiagnosticReport and Communication entry. A subscription notification without any
    (a handshake, a heartbeat) gives none; any other Bundle without any is refused.

    Raises:
        FhirRefused: a Bundle type this gateway does not take, or a report or alert that
            cannot become a valid event (its ``expression`` names the element).
    """
    zone = ZoneInfo(mapping.defaults.timezone)
    if isinstance(resource, Bundle):
        return _bundle_events(resource, mapping, zone)
    context = _Context()
    kind = resource.get_resource_type()
    if isinstance(resource, DiagnosticReport):
        return list(_report_events(resource, context, mapping, zone, kind))
    if isinstance(resource, Communication):
        return list(_alert_events(resource, context, mapping, zone, kind))
    raise FhirRefused(FhirIssue.NOT_SUPPORTED, f"{kind} is not mapped to an event")


_MAPPED = ("DiagnosticReport", "Communication")
_NOTIFICATION_STATUS = ("SubscriptionStatus", "Parameters")


def _bundle_events(bundle: Bundle, mapping: FhirMapping, zone: ZoneInfo) -> list[Event]:
    kind = str(bundle.type or "")
    if kind not in _BUNDLE_TYPES:
        raise FhirRefused(
            FhirIssue.NOT_SUPPORTED,
            f"a Bundle of type {kind[:40] or '(none)'} is not taken "
            f"(only {', '.join(sorted(_BUNDLE_TYPES))})",
            expression="Bundle.type",
        )
    entries = list(bundle.entry or [])
    first: Any = entries[0].resource if entries else None
    notification = kind == "subscription-notification" or (
        kind == "history"
        and first is not None
        and first.get_resource_type() in _NOTIFICATION_STATUS
    )
    context = _Context.of(bundle)
    events: list[Event] = []
    for n, entry in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        resource: Any = entry.resource
        method = entry.request.method if entry.request is not None else None
        if resource is None or method not in (None, "POST", "PUT"):
            target = f"/{entry.fullUrl or ''} /{entry.request.url if entry.request else ''}"
            if any(f"/{name}/" in target or f"/{name} " in target for name in _MAPPED):
                raise FhirRefused(
                    FhirIssue.NOT_SUPPORTED,
                    "an entry of a report or alert must carry the resource to be created "
                    "(no id-only notifications, no DELETE, PATCH or GET)",
                    expression=where,
                )
            continue
        kind_of = resource.get_resource_type()
        if kind_of == "DiagnosticReport":
            events.extend(_report_events(resource, context, mapping, zone, f"{where}.resource"))
        elif kind_of == "Communication":
            events.extend(_alert_events(resource, context, mapping, zone, f"{where}.resource"))
    if not events and not notification:
        raise FhirRefused(
            FhirIssue.REQUIRED,
            "the Bundle holds no DiagnosticReport or Communication",
            expression="Bundle.entry",
        )
    return events


def _studies(
    references: list[Any], referrer: Any, ctx: _Context, where: str
) -> list[tuple[str, Any]]:
    if not references:
        raise FhirRefused(
            FhirIssue.REQUIRED,
            "no ImagingStudy reference: the study instance UID comes from it",
            expression=where,
        )
    studies = _study_uids(references, referrer, ctx)
    if not studies:
        raise FhirRefused(
            FhirIssue.NOT_FOUND,
            "no referenced ImagingStudy with an identifier of system urn:dicom:uid "
            "(in the Bundle, contained, or as Reference.identifier)",
            expression=where,
        )
    return studies


def _occurred(candidates: Iterable[Any], zone: ZoneInfo, where: str, names: str) -> int:
    for value in candidates:
        if value is not None:
            return _epoch_ms(value, zone, where)
    raise FhirRefused(FhirIssue.REQUIRED, f"no time of the change ({names})", expression=where)


def _required(value: str | None, what: str, where: str) -> str:
    if not value:
        raise FhirRefused(FhirIssue.REQUIRED, f"no {what}", expression=where)
    return value


def _last_updated(resource: Any) -> Any:
    return resource.meta.lastUpdated if resource.meta is not None else None


def _report_events(
    report: Any, ctx: _Context, mapping: FhirMapping, zone: ZoneInfo, where: str
) -> Iterator[ReportEvent]:
    raw_status = str(report.status or "")
    status = mapping.report_status.get(raw_status)
    if status is None:
        raise FhirRefused(
            FhirIssue.CODE_INVALID,
            f"status {raw_status[:40]!r} is not a report status the mapping accepts",
            expression=f"{where}.status",
        )
    studies = _studies(report.imagingStudy or [], report, ctx, f"{where}.imagingStudy")
    site = _site(report, mapping, where)
    rules = mapping.identifiers
    report_id = _required(_identifier(report, rules.report_id), "report id", f"{where}.identifier")
    occurred = _occurred(
        (report.issued, _last_updated(report), ctx.timestamp),
        zone,
        f"{where}.issued",
        "issued, meta.lastUpdated, Bundle.timestamp",
    )
    completed = report.effectivePeriod.end if report.effectivePeriod is not None else None
    parent = _extension(report, mapping.extensions.parent_report)
    parent_id = None
    if parent is not None and parent.valueReference is not None:
        parent_id = _reference_identifier(parent.valueReference, report, ctx, rules.report_id)
        if parent_id is None and parent.valueReference.reference:
            parent_id = str(parent.valueReference.reference).rstrip("/").split("/")[-1] or None
    interpreters = report.resultsInterpreter or []
    common: dict[str, Any] = {
        "occurred_at_ms": occurred,
        "site_id": site,
        "patient_id": _patient_id(report.subject, report, ctx, rules.patient_id),
        "procedure_code": _procedure_code(report.code, mapping),
        "report_id": report_id,
        "parent_report_id": parent_id,
        "status": status,
        "interpreter_id": (
            _reference_identifier(interpreters[0], report, ctx, rules.interpreter_id)
            if interpreters
            else None
        ),
        "exam_completed_at_ms": (
            None if completed is None else _epoch_ms(completed, zone, f"{where}.effectivePeriod")
        ),
        "findings": _findings(report, ctx, mapping),
    }
    event_id = f"fhir:{site}:{report_id}:{raw_status}:{occurred}"
    for uid, study in studies:
        yield _event(
            ReportEvent,
            where,
            event_id=event_id if len(studies) == 1 else f"{event_id}:{uid}",
            study_uid=uid,
            accession_number=_accession(report, study, ctx, rules.accession_number),
            modality=_modality(study, report, mapping),
            **common,
        )


def _accession(report: Any, study: Any, ctx: _Context, rule: _IdentifierRule) -> str | None:
    """The accession number: of the report, else of its study, else of an order it is
    based on (a ServiceRequest in the Bundle, or a logical reference)."""
    found = _identifier(report, rule) or (None if study is None else _identifier(study, rule))
    for order in report.basedOn or []:
        found = found or _reference_identifier(order, report, ctx, rule)
    return found


def _event(model: type[Any], where: str, **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as exc:  # not expected: every field above is typed already
        error = exc.errors(include_input=False, include_url=False)[0]
        raise FhirRefused(
            FhirIssue.VALUE, f"not a valid event: {error['loc']} {error['msg']}", expression=where
        ) from exc


def _patient_id(subject: Any, report: Any, ctx: _Context, rule: _IdentifierRule) -> str | None:
    if subject is None:
        return None
    target = ctx.resolve(subject, report)
    if target is not None:
        return _identifier(target, rule) if target.get_resource_type() == "Patient" else None
    if subject.type not in (None, "Patient") or (
        subject.reference and "Patient/" not in str(subject.reference)
    ):
        return None
    return _reference_identifier(subject, report, ctx, rule)


def _procedure_code(code: Any, mapping: FhirMapping) -> str | None:
    codings = [c for c in (code.coding or [] if code is not None else []) if c.code]
    for system in mapping.codes.procedure_systems:
        for coding in codings:
            if coding.system == system:
                return str(coding.code)
    return str(codings[0].code) if codings else None


def _modality(study: Any, report: Any, mapping: FhirMapping) -> str | None:
    for coding in (study.modality or []) if study is not None else []:
        if coding.code:
            return str(coding.code)
    prefix = mapping.codes.modality_category_system + "|"
    for token in _codings(report.category or []):
        if token.startswith(prefix):
            return token[len(prefix) :]
    return None


def _findings(report: Any, ctx: _Context, mapping: FhirMapping) -> tuple[Finding, ...]:
    """Labelled findings: result Observations first, then conclusionCode; the last one
    of a finding wins (the conclusion sums the observations up)."""
    found: dict[str, Label] = {}
    for reference in report.result or []:
        observation = ctx.resolve(reference, report)
        if observation is None or observation.get_resource_type() != "Observation":
            continue
        if observation.status == "entered-in-error":
            continue
        finding = next(
            (
                mapping.observations[t]
                for t in _codings(observation.code)
                if t in mapping.observations
            ),
            None,
        )
        values = _codings(observation.valueCodeableConcept)
        if observation.valueString:
            values.append(str(observation.valueString))
        label = next((mapping.labels[v] for v in values if v in mapping.labels), None)
        if finding is not None and label is not None:
            found[finding] = label
    for token in _codings(report.conclusionCode or []):
        conclusion = mapping.conclusion_codes.get(token)
        if conclusion is not None:
            found[conclusion.finding] = conclusion.label
    return tuple(
        Finding(finding_code=code, label=label, label_method=LabelMethod.STRUCTURED)
        for code, label in sorted(found.items())
    )


def _alert_events(
    alert: Any, ctx: _Context, mapping: FhirMapping, zone: ZoneInfo, where: str
) -> Iterator[AlertEvent]:
    settings = mapping.communication
    raw_status = str(alert.status or "")
    state = next(
        (settings.states[t] for t in _codings(alert.category or []) if t in settings.states),
        settings.status.get(raw_status),
    )
    if state is None:
        raise FhirRefused(
            FhirIssue.CODE_INVALID,
            f"no alert state: no category coding the mapping knows, and status "
            f"{raw_status[:40]!r} is not one it maps",
            expression=f"{where}.category",
        )
    studies = _studies(alert.about or [], alert, ctx, f"{where}.about")
    site = _site(alert, mapping, where)
    rules = mapping.identifiers
    alert_id = _required(_identifier(alert, rules.alert_id), "alert id", f"{where}.identifier")
    finding = _required(
        _finding_code(_codings(alert.reasonCode or []), mapping),
        "reasonCode coding the mapping knows as a finding",
        f"{where}.reasonCode",
    )
    device = ctx.resolve(alert.sender, alert) if alert.sender is not None else None
    if device is None or device.get_resource_type() != "Device":
        raise FhirRefused(
            FhirIssue.REQUIRED,
            "the sender must reference the AI algorithm's Device (in the Bundle or contained)",
            expression=f"{where}.sender",
        )
    names = [n.name for n in device.deviceName or [] if n.name]
    versions = [v.value for v in device.version or [] if v.value]
    occurred = _occurred(
        (alert.sent, alert.received, _last_updated(alert), ctx.timestamp),
        zone,
        f"{where}.sent",
        "sent, received, meta.lastUpdated, Bundle.timestamp",
    )
    role, recipient_id = _recipient(alert, ctx, rules.recipient_id)
    before = _extension(alert, mapping.extensions.priority_before)
    event_id = f"fhir-alert:{site}:{alert_id}:{state.value}:{occurred}"
    for uid, _ in studies:
        yield _event(
            AlertEvent,
            where,
            event_id=event_id if len(studies) == 1 else f"{event_id}:{uid}",
            occurred_at_ms=occurred,
            site_id=site,
            study_uid=uid,
            alert_id=alert_id,
            inference_event_id=_inference_event_id(alert, ctx, settings.inference_event_system),
            algorithm_name=_required(
                names[0] if names else None, "Device.deviceName", f"{where}.sender"
            ),
            algorithm_version=_required(
                versions[0] if versions else None, "Device.version", f"{where}.sender"
            ),
            finding_code=finding,
            state=state,
            channel=next(
                (
                    settings.channels[t]
                    for t in _codings(alert.medium or [])
                    if t in settings.channels
                ),
                settings.default_channel,
            ),
            recipient_role=role,
            recipient_id=recipient_id,
            priority_before=(
                settings.priority.get(str(before.valueCode)) if before is not None else None
            ),
            priority_after=settings.priority.get(str(alert.priority or "")),
            dismiss_reason=_concept_text(alert.statusReason),
        )


def _finding_code(tokens: Iterable[str], mapping: FhirMapping) -> str | None:
    """The finding of the first coding the mapping knows (a conclusion or observation code)."""
    for token in tokens:
        if token in mapping.conclusion_codes:
            return mapping.conclusion_codes[token].finding
        if token in mapping.observations:
            return mapping.observations[token]
    return None


def _concept_text(concept: Any) -> str | None:
    """A CodeableConcept's text, else its first code."""
    if concept is None:
        return None
    codes = [str(c.code) for c in concept.coding or [] if c.code]
    return str(concept.text) if concept.text else (codes[0] if codes else None)


def _recipient(alert: Any, ctx: _Context, rule: _IdentifierRule) -> tuple[str | None, str | None]:
    recipients = alert.recipient or []
    if not recipients:
        return None, None
    target = ctx.resolve(recipients[0], alert)
    if target is not None and target.get_resource_type() == "PractitionerRole":
        role = _concept_text((target.code or [None])[0])
        practitioner = target.practitioner
        person = (
            _reference_identifier(practitioner, target, ctx, rule)
            if practitioner is not None
            else None
        )
        return role, person
    return None, _reference_identifier(recipients[0], alert, ctx, rule)


def _inference_event_id(alert: Any, ctx: _Context, system: str) -> str | None:
    for reference in [*(alert.about or []), *(alert.basedOn or [])]:
        target = ctx.resolve(reference, alert)
        identifiers = (
            getattr(target, "identifier", None) or []
            if target is not None
            else [reference.identifier]
        )
        for identifier in identifiers:
            if identifier is not None and identifier.system == system and identifier.value:
                return str(identifier.value)
    return None


def operation_outcome(
    code: str,
    diagnostics: str,
    *,
    severity: Literal["fatal", "error", "warning", "information"] = "error",
    expression: str | None = None,
) -> dict[str, Any]:
    """An OperationOutcome with one issue, as JSON-ready data."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
