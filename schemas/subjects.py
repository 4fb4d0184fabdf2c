"""Subjects and their schemas: what every registry, the codec and the checks share.

**Subjects are record names** (Confluent's ``RecordNameStrategy``), e.g.
``imgov.events.v1.InferenceEvent``: a contract belongs to the record, not to a topic, and
the same record travels on several topics (input, dead letter, replay files). Producers
using Confluent's serializers set ``subject.name.strategy`` to
``record_subject_name_strategy``; consumers need nothing, they resolve ids.

The current contracts are the ``schemas/avro/*.avsc`` files, one record each, loaded by
``load_avsc``; the registries (``schemas.registry``) hold every version ever registered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import fastavro

from schemas.errors import SchemaError

__all__ = [
    "AVSC_DIR",
    "RegisteredSchema",
    "Schema",
    "canonical_json",
    "full_name",
    "load_avsc",
]

Schema: TypeAlias = dict[str, Any]
"""An Avro schema as parsed JSON; here always one named record."""

AVSC_DIR = Path(__file__).parent / "avro"


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of one subject."""

    subject: str
    version: int
    schema_id: int
    schema: Schema


def full_name(schema: Schema) -> str:
    """Returns the full name (namespace.name) of a named schema."""
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def canonical_json(schema: Schema) -> str:
    """Returns a stable text of ``schema``: sorted keys, no whitespace."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_avsc(directory: Path = AVSC_DIR) -> dict[str, Schema]:
    """Loads every ``*.avsc`` under ``directory``, keyed by subject (the record's full name).

    Raises:
        SchemaError: A file is not valid JSON, not a valid Avro record schema, or is named
            differently from its record.
    """
    schemas: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            fastavro.parse_schema(schema)
        except (ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"{path}: not a valid Avro schema: {exc}") from exc
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise SchemaError(f"{path}: must hold exactly one named record schema")
        if path.stem != schema["name"]:
            raise SchemaError(f"{path}: file name must be the record name {schema['name']}.avsc")
        schemas[full_name(schema)] = schema
    return schemas
