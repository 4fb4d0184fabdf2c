"""Confluent wire format <-> frozen models, with fastavro.

A framed message is ``0x00`` (magic byte), the writer schema id as 4 bytes big-endian,
then the Avro binary body. Alternatively the id travels in the header ``imgov.schema_id``
(ASCII decimal, e.g. ``b"1834567123"``); the value is then the raw Avro body without
framing, even when it happens to start with a zero byte. Confluent's own GUID headers
(``__value_schema_id``, magic byte 1) are not supported: imgov registries have no GUIDs.

Decoding, in this order, each failure a ``DecodeError`` with its DESIGN §6 reason:

1. size above ``max_message_bytes`` -> OVERSIZED, before any parsing;
2. framing: too short, wrong magic byte, bad header -> UNDECODABLE;
3. writer schema id unknown to the registry, not a record imgov reads, or not readable by
   the current schema -> UNKNOWN_SCHEMA (a registry that cannot be reached raises
   ``RegistryUnavailableError`` instead: that is no fault of the message);
4. the Avro body does not parse, or leaves bytes over -> UNDECODABLE;
5. the model or the value rules (``schemas.validation``) reject it -> VALIDATION_FAILED.

Speed (DESIGN §10): each writer schema id is resolved and parsed once, into a read plan.
Logical types are stripped from the schemas used for reading, so timestamps stay integer
milliseconds instead of becoming datetimes (fastavro converts by the *writer* schema's
``logicalType``; the binary encoding is the same). When the writer is the current schema
no resolution runs at all; when an older writer differs only by top-level fields added
(with simple defaults) or removed, the body is read with the writer schema alone and the
dict is patched, which is several times faster than fastavro's per-record resolution.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

import fastavro
import fastavro.schema
from pydantic import BaseModel, ValidationError

from schemas.compatibility import backward_problems
from schemas.errors import (
    EncodeError,
    OversizedError,
    SchemaNotFoundError,
    UndecodableError,
    UnknownSchemaError,
)
from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.records import (
    AuditCheckpoint,
    Breach,
    DeadLetter,
    KpiValue,
    LineageRecord,
    ReviewCandidate,
)
from schemas.registry import REGISTRY_URL_ENV, SchemaRegistry
from schemas.subjects import AVSC_DIR, Schema, canonical_json, full_name, load_avsc
from schemas.validation import EventValidator, validation_failed_from_pydantic

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EVENT_SUBJECTS",
    "HEADER_SCHEMA_ID",
    "MAGIC_BYTE",
    "MODELS_BY_SUBJECT",
    "SUBJECTS_BY_MODEL",
    "Codec",
    "Headers",
    "schema_for_reading",
]

MAGIC_BYTE = 0
HEADER_SCHEMA_ID = "imgov.schema_id"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""1 MiB: Kafka's default ``message.max.bytes``; an imaging event is well under 2 KiB."""

MODELS_BY_SUBJECT: dict[str, type[BaseModel]] = {
    "imgov.events.v1.InferenceEvent": InferenceEvent,
    "imgov.events.v1.AlertEvent": AlertEvent,
    "imgov.events.v1.ReportEvent": ReportEvent,
    "imgov.governance.v1.LineageRecord": LineageRecord,
    "imgov.governance.v1.KpiValue": KpiValue,
    "imgov.governance.v1.Breach": Breach,
    "imgov.governance.v1.ReviewCandidate": ReviewCandidate,
    "imgov.governance.v1.DeadLetter": DeadLetter,
    "imgov.governance.v1.AuditCheckpoint": AuditCheckpoint,
}
"""Subject (= the record's full name) of every contract, and its model."""

SUBJECTS_BY_MODEL: dict[type[BaseModel], str] = {m: s for s, m in MODELS_BY_SUBJECT.items()}
EVENT_SUBJECTS = frozenset(SUBJECTS_BY_MODEL[m] for m in (InferenceEvent, AlertEvent, ReportEvent))

Headers: TypeAlias = Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None
"""Kafka headers as clients hand them over: a list of (key, value) pairs or a mapping."""

M = TypeVar("M", bound=BaseModel)
_SIMPLE_KINDS = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "enum"})
_NO_SIMPLE_DEFAULT = object()


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def schema_for_reading(schema: Schema) -> Any:
    """Returns ``schema`` without logical types, parsed by fastavro: timestamps read as ints."""
    return fastavro.parse_schema(_strip_logical_types(schema))


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to read the bodies written with one schema id."""

    schema_id: int
    subject: str
    model: type[BaseModel]
    writer: Any
    reader: Any
    drop: tuple[str, ...] = ()
    add: tuple[tuple[str, Any], ...] = ()


class Codec:
    """Encodes models to, and decodes them from, Confluent-framed Avro.

    One instance per process; it caches schema ids and read plans and is not thread-safe
    while it fills them (worker threads should each own one).

    Args:
        registry: Resolves schema ids (``schemas.registry.open_registry``).
        validator: Applies the value rules to decoded events; ``None`` checks types only.
        max_message_bytes: Larger inputs are rejected as OVERSIZED before parsing.

    Raises:
        SchemaError: On construction, if the current .avsc files cannot be loaded.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        validator: EventValidator | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._registry = registry
        self._validator = validator
        self._max_bytes = max_message_bytes
        self._current = {s: v for s, v in load_avsc(AVSC_DIR).items() if s in MODELS_BY_SUBJECT}
        self._parsed = {s: schema_for_reading(v) for s, v in self._current.items()}
        self._ids: dict[type[BaseModel], int] = {}
        self._plans: dict[int, _ReadPlan] = {}

    @property
    def registry(self) -> SchemaRegistry:
        """The registry that resolves schema ids."""
        return self._registry

    @property
    def max_message_bytes(self) -> int:
        """Inputs larger than this are rejected as OVERSIZED."""
        return self._max_bytes

    # --- encoding -------------------------------------------------------------------------

    def schema_id(self, model_type: type[BaseModel]) -> int:
        """Returns the registry id of the current schema of ``model_type``.

        Raises:
            SchemaNotFoundError: The current schema is not registered.
            RegistryUnavailableError: The registry could not be asked.
        """
        if model_type not in self._ids:
            subject = SUBJECTS_BY_MODEL[model_type]
            self._ids[model_type] = self._registry.id_for(subject, self._current[subject])
        return self._ids[model_type]

    def schema_id_header(self, model_type: type[BaseModel]) -> tuple[str, bytes]:
        """Returns the header that carries the schema id of unframed bodies."""
        return HEADER_SCHEMA_ID, str(self.schema_id(model_type)).encode()

    def encode(
        self,
        record: BaseModel | Mapping[str, Any],
        model_type: type[BaseModel] | None = None,
        *,
        framed: bool = True,
    ) -> bytes:
        """Encodes ``record`` with the current schema of its model.

        Args:
            record: A model instance, or a mapping of field values (then ``model_type``
                is required and the mapping is validated by the model first).
            model_type: The model, when ``record`` is a mapping.
            framed: ``False`` returns the bare Avro body, for use with ``schema_id_header``.

        Raises:
            EncodeError: The record does not fit the schema.
            SchemaNotFoundError: The current schema is not registered.
        """
        if isinstance(record, BaseModel):
            model_type = type(record)
        else:
            if model_type is None:
                raise TypeError("encode(mapping) needs model_type")
            try:
                record = model_type.model_validate(record)
            except ValidationError as exc:
                raise EncodeError(f"{model_type.__name__} is not valid: {exc}") from exc
        schema_id = self.schema_id(model_type)
        buffer = io.BytesIO()
        if framed:
            buffer.write(bytes((MAGIC_BYTE,)) + schema_id.to_bytes(4, "big"))
        try:
            fastavro.schemaless_writer(
                buffer, self._parsed[SUBJECTS_BY_MODEL[model_type]], record.model_dump()
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{model_type.__name__} does not fit its schema: {exc}") from exc
        return buffer.getvalue()

    # --- decoding -------------------------------------------------------------------------

    def decode_event(self, value: bytes, headers: Headers = None) -> Event:
        """Decodes and validates one input event of any of the three types.

        Raises:
            DecodeError: With the reason (see the module docstring).
            RegistryUnavailableError: The registry could not be asked; retry later.
        """
        plan, offset = self._locate(value, headers)
        if plan.subject not in EVENT_SUBJECTS:
            raise UnknownSchemaError(
                f"schema id {plan.schema_id} is {plan.subject}, not an input event",
                schema_id=plan.schema_id,
            )
        event: Event = self._read(value, offset, plan)
        return event if self._validator is None else self._validator.validate(event)

    def decode(self, value: bytes, model_type: type[M], headers: Headers = None) -> M:
        """Decodes one record that must be a ``model_type`` (events are also validated).

        Raises:
            DecodeError: With the reason; UNKNOWN_SCHEMA also when the writer schema is
                another record.
            RegistryUnavailableError: The registry could not be asked; retry later.
        """
        plan, offset = self._locate(value, headers)
        if plan.model is not model_type:
            raise UnknownSchemaError(
                f"schema id {plan.schema_id} is {plan.subject}, "
                f"not {SUBJECTS_BY_MODEL[model_type]}",
                schema_id=plan.schema_id,
            )
        record: M = self._read(value, offset, plan)
        if self._validator is not None and plan.subject in EVENT_SUBJECTS:
            return cast(M, self._validator.validate(cast(Event, record)))
        return record

    def _locate(self, value: bytes, headers: Headers) -> tuple[_ReadPlan, int]:
        size = len(value)
        if size > self._max_bytes:
            raise OversizedError(
                f"message of {size:,} bytes exceeds the limit of {self._max_bytes:,} bytes "
                "(max_message_bytes); it was not parsed"
            )
        schema_id = _header_schema_id(headers) if headers else None
        offset = 0
        if schema_id is None:
            if size < 5 or value[0] != MAGIC_BYTE:
                raise UndecodableError(_framing_problem(value))
            schema_id = int.from_bytes(value[1:5], "big")
            offset = 5
        plan = self._plans.get(schema_id)
        if plan is None:
            plan = self._plans[schema_id] = self._plan(schema_id)
        return plan, offset

    def _read(self, value: bytes, offset: int, plan: _ReadPlan) -> Any:
        # Returns Any: the model is chosen at run time by the writer schema's name.
        stream = io.BytesIO(value)
        stream.seek(offset)
        try:
            data: Any = fastavro.schemaless_reader(stream, plan.writer, plan.reader)
        except Exception as exc:  # fastavro raises anything from EOFError to IndexError
            raise UndecodableError(
                f"the Avro body cannot be read with schema id {plan.schema_id} "
                f"({plan.subject}): {type(exc).__name__}: {exc}",
                schema_id=plan.schema_id,
            ) from exc
        left = len(value) - stream.tell()
        if left:
            raise UndecodableError(
                f"{left} bytes left over after the {plan.subject} record (schema id "
                f"{plan.schema_id}): the body was written with another schema, or is corrupt",
                schema_id=plan.schema_id,
            )
        for name in plan.drop:
            del data[name]
        for name, default in plan.add:
            data[name] = default
        try:
            return plan.model.model_validate(data)
        except ValidationError as exc:
            raise validation_failed_from_pydantic(
                plan.model, exc, schema_id=plan.schema_id
            ) from exc

    def _plan(self, schema_id: int) -> _ReadPlan:
        try:
            writer = self._registry.schema_by_id(schema_id)
        except SchemaNotFoundError as exc:
            raise UnknownSchemaError(
                f"schema id {schema_id} is not in the schema registry ({exc}): register the "
                f"producer's schema, or point imgov at the producer's registry "
                f"({REGISTRY_URL_ENV})",
                schema_id=schema_id,
            ) from exc
        subject = full_name(writer) if isinstance(writer, dict) and "name" in writer else "?"
        model = MODELS_BY_SUBJECT.get(subject)
        if model is None:
            raise UnknownSchemaError(
                f"schema id {schema_id} is {subject}, which imgov does not read",
                schema_id=schema_id,
            )
        reader = self._current[subject]
        if canonical_json(_strip_logical_types(writer)) == canonical_json(
            _strip_logical_types(reader)
        ):
            return _ReadPlan(schema_id, subject, model, self._parsed[subject], None)
        problems = backward_problems(reader, writer)
        if problems:
            raise UnknownSchemaError(
                f"schema id {schema_id} ({subject}) cannot be read by the current schema: "
                + "; ".join(problems[:3]),
                schema_id=schema_id,
            )
        try:
            parsed_writer = schema_for_reading(writer)
        except Exception as exc:  # fastavro's parse errors have no common base class
            raise UnknownSchemaError(
                f"schema id {schema_id} ({subject}) is not a valid Avro schema: {exc}",
                schema_id=schema_id,
            ) from exc
        patch = _top_level_patch(reader, writer)
        if patch is None:
            return _ReadPlan(schema_id, subject, model, parsed_writer, self._parsed[subject])
        return _ReadPlan(schema_id, subject, model, parsed_writer, None, *patch)


def _top_level_patch(
    reader: Schema, writer: Schema
) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]] | None:
    """Returns (fields to drop, fields to add with their defaults) when the writer differs
    from the reader only by whole top-level fields; ``None`` when fastavro must resolve."""
    r_fields = _fields_by_name(reader)
    w_fields = _fields_by_name(writer)
    add: list[tuple[str, Any]] = []
    for name, field in r_fields.items():
        if field.get("aliases"):
            return None
        if name in w_fields:
            same = canonical_json(_strip_logical_types(field["type"])) == canonical_json(
                _strip_logical_types(w_fields[name]["type"])
            )
            if not same:
                return None
        else:
            default = _python_default(field)
            if default is _NO_SIMPLE_DEFAULT:
                return None
            add.append((name, default))
    return tuple(n for n in w_fields if n not in r_fields), tuple(add)


def _fields_by_name(schema: Schema) -> dict[str, Schema]:
    expanded = cast(Schema, fastavro.schema.expand_schema(schema))
    return {field["name"]: field for field in expanded["fields"]}


def _python_default(field: Schema) -> Any:
    # An Avro union's default belongs to its first branch; JSON defaults of these kinds
    # are already the Python values the model accepts (bytes and records are not).
    kind = field["type"][0] if isinstance(field["type"], list) else field["type"]
    kind = kind if isinstance(kind, str) else kind["type"]
    if kind == "array" and field["default"] == []:
        return ()
    if kind in _SIMPLE_KINDS:
        return field["default"]
    return _NO_SIMPLE_DEFAULT


def _header_schema_id(
    headers: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None],
) -> int | None:
    if isinstance(headers, Mapping):
        raw = headers.get(HEADER_SCHEMA_ID)
    else:
        raw = next((v for k, v in headers or () if k == HEADER_SCHEMA_ID), None)
    if raw is None:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise UndecodableError(
            f"header {HEADER_SCHEMA_ID}={text[:20]!r} is not a decimal schema id"
        )
    return int(text)


def _framing_problem(value: bytes) -> str:
    size = len(value)
    if size == 0:
        return "empty message: expected Confluent framing (0x00, 4-byte schema id, Avro body)"
    first = value[0]
    if first != MAGIC_BYTE:
        hint = ""
        if first == 1:
            hint = (
                " (0x01 is Confluent's GUID framing, which imgov does not read: configure "
                "the producer's serializer to write schema ids, not GUIDs)"
            )
        elif first in b"{[":
            hint = " (it looks like JSON: send Avro, or use the JSON Lines file reader)"
        return f"first byte 0x{first:02x} is not the Confluent magic byte 0x00{hint}"
    return (
        f"message of {size} bytes is shorter than the 5-byte Confluent header "
        f"(magic byte, schema id); no {HEADER_SCHEMA_ID} header either"
    )
