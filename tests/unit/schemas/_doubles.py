"""Test doubles of the registry protocol."""

from __future__ import annotations

from schemas.errors import RegistryUnavailableError, SchemaNotFoundError
from schemas.file_registry import schema_id_of
from schemas.subjects import RegisteredSchema, Schema, canonical_json, full_name


class MemoryRegistry:
    """An in-memory ``SchemaRegistry``; counts look-ups by id."""

    def __init__(self, *schemas: Schema) -> None:
        self.by_id: dict[int, RegisteredSchema] = {}
        self.lookups = 0
        for schema in schemas:
            self.add(schema)

    def add(self, schema: Schema) -> int:
        subject = full_name(schema)
        version = len(self.versions(subject)) + 1
        schema_id = schema_id_of(schema)
        self.by_id[schema_id] = RegisteredSchema(subject, version, schema_id, schema)
        return schema_id

    def id_for(self, subject: str, schema: Schema) -> int:
        for entry in self.by_id.values():
            if entry.subject == subject and canonical_json(entry.schema) == canonical_json(schema):
                return entry.schema_id
        raise SchemaNotFoundError(subject)

    def schema_by_id(self, schema_id: int) -> Schema:
        self.lookups += 1
        if schema_id not in self.by_id:
            raise SchemaNotFoundError(f"id {schema_id}")
        return self.by_id[schema_id].schema

    def versions(self, subject: str) -> list[RegisteredSchema]:
        return sorted(
            (e for e in self.by_id.values() if e.subject == subject), key=lambda e: e.version
        )

    def subjects(self) -> list[str]:
        return sorted({e.subject for e in self.by_id.values()})


class DownRegistry(MemoryRegistry):
    """A registry that cannot be reached for ids it does not know."""

    def schema_by_id(self, schema_id: int) -> Schema:
        if schema_id not in self.by_id:
            raise RegistryUnavailableError("connection refused")
        return super().schema_by_id(schema_id)
