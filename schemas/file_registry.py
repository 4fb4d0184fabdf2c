"""The schema registry kept in the repository, and its checks against the .avsc files.

``FileSchemaRegistry`` (the default, ``IMGOV_SCHEMA_REGISTRY_URL`` unset) keeps JSON files
under ``schemas/registry/``, one per subject, listing every version ever registered. A
schema's id is derived from its content (``schema_id_of``), so ids are deterministic,
identical on every machine, and two branches registering different schemas cannot hand
out the same id. The current ``schemas/avro/*.avsc`` files must equal each subject's
latest version; ``imgov schemas register`` appends changed ones (``register_changed``),
``imgov schemas check`` verifies (``check_repository``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from schemas.compatibility import backward_problems, round_trip_problems
from schemas.errors import IncompatibleSchemaError, SchemaError, SchemaNotFoundError
from schemas.subjects import (
    AVSC_DIR,
    RegisteredSchema,
    Schema,
    canonical_json,
    full_name,
    load_avsc,
)

__all__ = [
    "REGISTRY_DIR",
    "FileSchemaRegistry",
    "check_repository",
    "register_changed",
    "schema_id_of",
]

REGISTRY_DIR = Path(__file__).parent / "registry"


def schema_id_of(schema: Schema) -> int:
    """Returns the file registry's id of ``schema``: 31 bits of the sha256 of its canonical
    JSON (positive, as Confluent framing expects), never 0."""
    digest = hashlib.sha256(canonical_json(schema).encode()).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF) or 1


class FileSchemaRegistry:
    """The registry kept in the repository: ``<directory>/<subject>.json`` per subject.

    Each file holds ``{"subject": ..., "versions": [{"version", "id", "schema"}, ...]}``.
    Loaded once at construction; ``register`` writes through.

    Raises:
        SchemaError: On construction, when a file is malformed or inconsistent (an id that
            does not match its schema, a gap in versions, two schemas with one id).
    """

    def __init__(self, directory: Path = REGISTRY_DIR) -> None:
        self._directory = directory
        self._versions: dict[str, list[RegisteredSchema]] = {}
        self._by_id: dict[int, RegisteredSchema] = {}
        for path in sorted(directory.glob("*.json")):
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            subject = document["subject"]
            entries = [
                RegisteredSchema(subject, int(v["version"]), int(v["id"]), v["schema"])
                for v in document["versions"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"{path}: malformed registry file: {exc}") from exc
        if path.stem != subject:
            raise SchemaError(f"{path}: file name must be the subject {subject}.json")
        for number, entry in enumerate(entries, start=1):
            where = f"{path}: version {entry.version}"
            if entry.version != number:
                raise SchemaError(f"{where}: versions must run 1, 2, ... without gaps")
            if full_name(entry.schema) != subject:
                raise SchemaError(f"{where}: schema {full_name(entry.schema)} is not {subject}")
            if entry.schema_id != schema_id_of(entry.schema):
                raise SchemaError(f"{where}: id {entry.schema_id} does not match its schema")
            self._index(entry, where)
        self._versions[subject] = entries

    def _index(self, entry: RegisteredSchema, where: str) -> None:
        known = self._by_id.get(entry.schema_id)
        if known is not None and canonical_json(known.schema) != canonical_json(entry.schema):
            raise SchemaError(f"{where}: id {entry.schema_id} collides with {known.subject}")
        self._by_id.setdefault(entry.schema_id, entry)

    def id_for(self, subject: str, schema: Schema) -> int:
        text = canonical_json(schema)
        for entry in self._versions.get(subject, ()):
            if canonical_json(entry.schema) == text:
                return entry.schema_id
        raise SchemaNotFoundError(
            f"this version of {subject} is not in the file registry {self._directory}: "
            "run `imgov schemas register` and commit the result"
        )

    def schema_by_id(self, schema_id: int) -> Schema:
        entry = self._by_id.get(schema_id)
        if entry is None:
            raise SchemaNotFoundError(
                f"schema id {schema_id} is not in the file registry {self._directory}"
            )
        return entry.schema

    def versions(self, subject: str) -> list[RegisteredSchema]:
        return list(self._versions.get(subject, ()))

    def subjects(self) -> list[str]:
        return sorted(self._versions)

    def register(self, subject: str, schema: Schema) -> RegisteredSchema:
        """Appends ``schema`` as the next version of ``subject`` and writes the file.

        Returns:
            The new version, or the existing one if this exact schema is registered.

        Raises:
            IncompatibleSchemaError: It cannot read data of every earlier version.
            SchemaError: Its full name is not ``subject``, or its id collides.
        """
        if full_name(schema) != subject:
            raise SchemaError(f"schema {full_name(schema)} cannot be registered as {subject}")
        versions = self._versions.get(subject, [])
        text = canonical_json(schema)
        for entry in versions:
            if canonical_json(entry.schema) == text:
                return entry
        problems = tuple(
            f"cannot read version {old.version}: {problem}"
            for old in versions
            for problem in backward_problems(schema, old.schema)
        )
        if problems:
            raise IncompatibleSchemaError(
                f"{subject} is not BACKWARD compatible with its earlier versions", problems
            )
        entry = RegisteredSchema(subject, len(versions) + 1, schema_id_of(schema), schema)
        self._index(entry, f"{subject} version {entry.version}")
        self._versions[subject] = [*versions, entry]
        self._write(subject)
        return entry

    def _write(self, subject: str) -> None:
        document = {
            "subject": subject,
            "versions": [
                {"version": e.version, "id": e.schema_id, "schema": e.schema}
                for e in self._versions[subject]
            ],
        }
        self._directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        (self._directory / f"{subject}.json").write_text(text, encoding="utf-8")


def check_repository(avsc_dir: Path = AVSC_DIR, registry_dir: Path = REGISTRY_DIR) -> list[str]:
    """Checks the .avsc files against the file registry; used by ``imgov schemas check``.

    Verifies that every .avsc is registered as its subject's latest version, that no
    subject is registered without an .avsc, and that every version (and an unregistered
    .avsc) can read the data of every earlier version: by the resolution rules
    (``backward_problems``) and by a fastavro round trip of generated records.

    Returns:
        One line per problem; empty when all is well.

    Raises:
        SchemaError: An .avsc or a registry file cannot be loaded at all.
    """
    current = load_avsc(avsc_dir)
    registry = FileSchemaRegistry(registry_dir)
    problems: list[str] = []
    for subject in registry.subjects():
        if subject not in current:
            problems.append(f"{subject} is registered but {avsc_dir}/ has no .avsc for it")
    for subject, schema in current.items():
        file = avsc_dir / f"{schema['name']}.avsc"
        versions = registry.versions(subject)
        chain = [v.schema for v in versions]
        if not versions:
            problems.append(f"{file} is not registered: run `imgov schemas register`")
            chain.append(schema)
        elif canonical_json(versions[-1].schema) != canonical_json(schema):
            latest = versions[-1].version
            problems.append(
                f"{file} differs from version {latest} of {subject}, the latest registered: "
                f"run `imgov schemas register` to register it as version {latest + 1}"
            )
            chain.append(schema)
        for newer in range(1, len(chain)):
            for older in range(newer):
                label = f"{subject} v{newer + 1} cannot read data written by v{older + 1}"
                found = backward_problems(chain[newer], chain[older])
                found = found or round_trip_problems(chain[newer], chain[older])
                problems.extend(f"{label}: {problem}" for problem in found)
    return problems


def register_changed(
    avsc_dir: Path = AVSC_DIR, registry_dir: Path = REGISTRY_DIR
) -> list[RegisteredSchema]:
    """Registers every .avsc that differs from its subject's latest version.

    Returns:
        The versions added, in subject order.

    Raises:
        IncompatibleSchemaError: An .avsc cannot read an earlier version's data; nothing
            is written for that subject.
    """
    registry = FileSchemaRegistry(registry_dir)
    added = []
    for subject, schema in load_avsc(avsc_dir).items():
        versions = registry.versions(subject)
        if not versions or canonical_json(versions[-1].schema) != canonical_json(schema):
            added.append(registry.register(subject, schema))
    return added
