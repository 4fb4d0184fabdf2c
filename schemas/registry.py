"""Schema registries: where schema ids come from, and which registry a process uses.

Two implementations of the ``SchemaRegistry`` protocol, chosen by ``open_registry``:

* ``FileSchemaRegistry`` (``schemas.file_registry``; the default,
  ``IMGOV_SCHEMA_REGISTRY_URL`` unset): JSON files under ``schemas/registry/``, one per
  subject, with ids derived from the schemas' content, checked against the
  ``schemas/avro/*.avsc`` files by ``imgov schemas check``.
* ``HttpSchemaRegistry`` (``schemas.http_registry``): any Confluent-compatible Schema
  Registry over HTTP (stdlib urllib).

Subjects are record names (``schemas.subjects``); a new version must be able to read the
data of every earlier one (BACKWARD compatibility, ``schemas.compatibility``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from schemas.file_registry import REGISTRY_DIR, FileSchemaRegistry
from schemas.http_registry import HttpSchemaRegistry
from schemas.subjects import RegisteredSchema, Schema

__all__ = [
    "REGISTRY_URL_ENV",
    "SchemaRegistry",
    "open_registry",
    "registry_from_environ",
]

REGISTRY_URL_ENV = "IMGOV_SCHEMA_REGISTRY_URL"


class SchemaRegistry(Protocol):
    """What the codec and the checks need from a registry."""

    def id_for(self, subject: str, schema: Schema) -> int:
        """Returns the id of ``schema`` registered under ``subject``.

        Raises:
            SchemaNotFoundError: It is not registered there.
            RegistryUnavailableError: The registry could not be asked.
        """
        ...

    def schema_by_id(self, schema_id: int) -> Schema:
        """Returns the schema with this id.

        Raises:
            SchemaNotFoundError: No schema has this id.
            RegistryUnavailableError: The registry could not be asked.
        """
        ...

    def versions(self, subject: str) -> list[RegisteredSchema]:
        """Returns every version of ``subject``, oldest first (empty if unknown)."""
        ...

    def subjects(self) -> list[str]:
        """Returns every subject, sorted."""
        ...


def open_registry(url: str | None = None, *, directory: Path = REGISTRY_DIR) -> SchemaRegistry:
    """Returns the HTTP registry at ``url``, or the file registry when ``url`` is empty."""
    if url:
        return HttpSchemaRegistry(url)
    return FileSchemaRegistry(directory)


def registry_from_environ(environ: Mapping[str, str]) -> SchemaRegistry:
    """Returns the registry selected by ``IMGOV_SCHEMA_REGISTRY_URL`` in ``environ``."""
    return open_registry(environ.get(REGISTRY_URL_ENV, "").strip() or None)
