"""Schema registries: where schema ids come from, and the BACKWARD compatibility rules.

Two implementations of the ``SchemaRegistry`` protocol, chosen by ``open_registry``:

* ``FileSchemaRegistry`` (the default, ``IMGOV_SCHEMA_REGISTRY_URL`` unset): JSON files under
  ``schemas/registry/``, one per subject, listing every version ever registered. A schema's
  id is derived from its content (``schema_id_of``), so ids are deterministic, identical on
  every machine, and two branches registering different schemas cannot hand out the same id.
  The current ``schemas/avro/*.avsc`` files must equal each subject's latest version;
  ``imgov schemas register`` appends changed ones, ``imgov schemas check`` verifies.
* ``HttpSchemaRegistry``: any Confluent-compatible Schema Registry over HTTP (stdlib urllib).

**Subjects are record names** (Confluent's ``RecordNameStrategy``), e.g.
``imgov.events.v1.InferenceEvent``: a contract belongs to the record, not to a topic, and
the same record travels on several topics (input, dead letter, replay files). Producers
using Confluent's serializers set ``subject.name.strategy`` to
``record_subject_name_strategy``; consumers need nothing, they resolve ids.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import fastavro
import fastavro.utils

from schemas.errors import (
    IncompatibleSchemaError,
    RegistryUnavailableError,
    SchemaError,
    SchemaNotFoundError,
)

__all__ = [
    "AVSC_DIR",
    "REGISTRY_DIR",
    "REGISTRY_URL_ENV",
    "FileSchemaRegistry",
    "HttpSchemaRegistry",
    "RegisteredSchema",
    "Schema",
    "SchemaRegistry",
    "backward_problems",
    "canonical_json",
    "check_repository",
    "full_name",
    "load_avsc",
    "open_registry",
    "register_changed",
    "registry_from_environ",
    "schema_id_of",
]

Schema: TypeAlias = dict[str, Any]
"""An Avro schema as parsed JSON; here always one named record."""

AVSC_DIR = Path(__file__).parent / "avro"
REGISTRY_DIR = Path(__file__).parent / "registry"
REGISTRY_URL_ENV = "IMGOV_SCHEMA_REGISTRY_URL"


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of one subject."""

    subject: str
    version: int
    schema_id: int
    schema: Schema


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


def full_name(schema: Schema) -> str:
    """Returns the full name (namespace.name) of a named schema."""
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def canonical_json(schema: Schema) -> str:
    """Returns a stable text of ``schema``: sorted keys, no whitespace."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_id_of(schema: Schema) -> int:
    """Returns the file registry's id of ``schema``: 31 bits of the sha256 of its canonical
    JSON (positive, as Confluent framing expects), never 0."""
    digest = hashlib.sha256(canonical_json(schema).encode()).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF) or 1


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


class HttpSchemaRegistry:
    """A client for a Confluent-compatible Schema Registry (REST API v1) over urllib.

    Schemas by id and ids by schema are cached for the life of the client (both are
    immutable in a registry). Credentials may be given as ``https://user:secret@host``.

    Raises (from every method):
        SchemaNotFoundError: HTTP 404.
        IncompatibleSchemaError: HTTP 409 on registration.
        RegistryUnavailableError: Connection failure, timeout, HTTP 5xx.
        SchemaError: Any other HTTP error.
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._auth: str | None = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            self._auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self._base = urllib.parse.urlunsplit(parts).rstrip("/")
        self._timeout_s = timeout_s
        self._schemas: dict[int, Schema] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self._base}{path}", data=data, method=method)
        request.add_header("Accept", f"{self._CONTENT_TYPE}, application/json")
        if data is not None:
            request.add_header("Content-Type", self._CONTENT_TYPE)
        if self._auth:
            request.add_header("Authorization", self._auth)
        where = f"schema registry {method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _http_error(where, exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailableError(f"{where}: {exc}") from exc
        except ValueError as exc:
            raise SchemaError(f"{where}: the answer is not JSON: {exc}") from exc

    @staticmethod
    def _subject_path(subject: str) -> str:
        return "/subjects/" + urllib.parse.quote(subject, safe="")

    def id_for(self, subject: str, schema: Schema) -> int:
        key = (subject, canonical_json(schema))
        if key not in self._ids:
            answer = self._request("POST", self._subject_path(subject), {"schema": key[1]})
            self._ids[key] = int(answer["id"])
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> Schema:
        if schema_id not in self._schemas:
            answer = self._request("GET", f"/schemas/ids/{schema_id}")
            if answer.get("schemaType", "AVRO") != "AVRO":
                raise SchemaNotFoundError(
                    f"schema id {schema_id} is a {answer['schemaType']} schema, not Avro"
                )
            self._schemas[schema_id] = json.loads(answer["schema"])
        return self._schemas[schema_id]

    def versions(self, subject: str) -> list[RegisteredSchema]:
        path = self._subject_path(subject)
        try:
            numbers = self._request("GET", f"{path}/versions")
        except SchemaNotFoundError:
            return []
        found = []
        for number in sorted(numbers):
            answer = self._request("GET", f"{path}/versions/{number}")
            schema = json.loads(answer["schema"])
            found.append(
                RegisteredSchema(subject, int(answer["version"]), int(answer["id"]), schema)
            )
        return found

    def subjects(self) -> list[str]:
        return sorted(self._request("GET", "/subjects"))

    def register(self, subject: str, schema: Schema) -> int:
        """Registers ``schema`` under ``subject`` (idempotent) and returns its id."""
        text = canonical_json(schema)
        answer = self._request("POST", f"{self._subject_path(subject)}/versions", {"schema": text})
        self._ids[(subject, text)] = int(answer["id"])
        return int(answer["id"])

    def is_compatible(self, subject: str, schema: Schema) -> bool:
        """Asks the registry whether ``schema`` may become the next version of ``subject``."""
        path = f"/compatibility{self._subject_path(subject)}/versions/latest"
        answer = self._request("POST", path, {"schema": canonical_json(schema)})
        return bool(answer["is_compatible"])


def _http_error(where: str, exc: urllib.error.HTTPError) -> SchemaError:
    try:
        detail = json.loads(exc.read() or b"{}").get("message", exc.reason)
    except (ValueError, AttributeError, OSError):
        detail = exc.reason
    message = f"{where}: HTTP {exc.code}: {detail}"
    if exc.code == 404:
        return SchemaNotFoundError(message)
    if exc.code == 409:
        return IncompatibleSchemaError(message)
    if exc.code >= 500:
        return RegistryUnavailableError(message)
    return SchemaError(message)


def open_registry(url: str | None = None, *, directory: Path = REGISTRY_DIR) -> SchemaRegistry:
    """Returns the HTTP registry at ``url``, or the file registry when ``url`` is empty."""
    if url:
        return HttpSchemaRegistry(url)
    return FileSchemaRegistry(directory)


def registry_from_environ(environ: Mapping[str, str]) -> SchemaRegistry:
    """Returns the registry selected by ``IMGOV_SCHEMA_REGISTRY_URL`` in ``environ``."""
    return open_registry(environ.get(REGISTRY_URL_ENV, "").strip() or None)


# --- BACKWARD compatibility (Avro schema resolution: a new reader reads old writers' data) ---

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_COMPLEX = _NAMED | {"array", "map"}
_PROMOTIONS = frozenset(
    {
        ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"),
        ("long", "double"), ("float", "double"), ("string", "bytes"), ("bytes", "string"),
    }
)  # fmt: skip
_Names: TypeAlias = dict[str, tuple[Any, str]]


def backward_problems(reader: Schema, writer: Schema) -> list[str]:
    """Lists why ``reader`` cannot read data written with ``writer`` (empty: it can).

    Follows the Avro specification's schema resolution: reader fields absent from the writer
    need a default; writer fields absent from the reader are skipped; numeric promotions
    int -> long -> float -> double and string <-> bytes; a reader enum must hold every writer
    symbol unless it has a default; every writer union branch must resolve; records, enums
    and fixed types must have the same full name (or a reader alias).
    """
    checker = _Resolver(_named_types(reader), _named_types(writer))
    checker.check(reader, "", writer, "", full_name(reader))
    return checker.problems


def _named_types(schema: Any) -> _Names:
    names: _Names = {}

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                name = _qualify(node["name"], node.get("namespace", namespace))
                child_ns = name.rpartition(".")[0]
                names[name] = (node, child_ns)
                for field in node.get("fields", ()):
                    walk(field["type"], child_ns)
            elif kind == "array":
                walk(node["items"], namespace)
            elif kind == "map":
                walk(node["values"], namespace)
            elif isinstance(kind, dict | list):
                walk(kind, namespace)

    walk(schema, "")
    return names


def _qualify(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Resolver:
    def __init__(self, reader_names: _Names, writer_names: _Names) -> None:
        self._rn = reader_names
        self._wn = writer_names
        self._in_progress: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def _deref(self, node: Any, namespace: str, names: _Names) -> tuple[Any, str]:
        while True:
            if isinstance(node, str):
                if node in _PRIMITIVES:
                    return node, namespace
                qualified = _qualify(node, namespace)
                node, namespace = names[qualified if qualified in names else node]
            elif isinstance(node, dict) and node.get("type") not in _COMPLEX:
                node = node["type"]  # a wrapped type: {"type": "long", "logicalType": ...}
            else:
                return node, namespace

    @staticmethod
    def _kind(node: Any) -> str:
        if isinstance(node, list):
            return "union"
        return node if isinstance(node, str) else str(node["type"])

    def _fits(self, r: Any, rns: str, w: Any, wns: str) -> bool:
        probe = _Resolver(self._rn, self._wn)
        probe._in_progress = set(self._in_progress)
        probe.check(r, rns, w, wns, "")
        return not probe.problems

    def check(self, r: Any, rns: str, w: Any, wns: str, path: str) -> None:
        r, rns = self._deref(r, rns, self._rn)
        w, wns = self._deref(w, wns, self._wn)
        rk, wk = self._kind(r), self._kind(w)
        if wk == "union":
            for branch in w:
                self.check(r, rns, branch, wns, path)
        elif rk == "union":
            if not any(self._fits(branch, rns, w, wns) for branch in r):
                self.problems.append(
                    f"{path}: writer type {wk} matches no branch of the reader union"
                )
        elif rk != wk:
            if (wk, rk) not in _PROMOTIONS:
                self.problems.append(f"{path}: writer type {wk} cannot be read as {rk}")
        elif rk in _NAMED:
            self._check_named(r, rns, w, wns, path)
        elif rk == "array":
            self.check(r["items"], rns, w["items"], wns, f"{path}[]")
        elif rk == "map":
            self.check(r["values"], rns, w["values"], wns, f"{path}{{}}")

    def _check_named(self, r: Schema, rns: str, w: Schema, wns: str, path: str) -> None:
        rname = _qualify(r["name"], r.get("namespace", rns))
        wname = _qualify(w["name"], w.get("namespace", wns))
        aliases = {_qualify(a, rname.rpartition(".")[0]) for a in r.get("aliases", ())}
        if wname != rname and wname not in aliases:
            self.problems.append(f"{path}: writer {wname} is not the reader's {rname}")
            return
        kind = r["type"]
        if kind == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                self.problems.append(
                    f"{path}: reader enum {rname} lacks writer symbols {missing} and has no default"
                )
        elif kind == "fixed":
            if r["size"] != w["size"]:
                self.problems.append(
                    f"{path}: fixed size {w['size']} cannot be read as {r['size']}"
                )
        elif (rname, wname) not in self._in_progress:
            self._in_progress.add((rname, wname))
            self._check_fields(r, rname, w, wname, path)

    def _check_fields(self, r: Schema, rname: str, w: Schema, wname: str, path: str) -> None:
        writer_fields = {f["name"]: f for f in w["fields"]}
        rns, wns = rname.rpartition(".")[0], wname.rpartition(".")[0]
        for field in r["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            match = next((writer_fields[n] for n in names if n in writer_fields), None)
            where = f"{path}.{field['name']}" if path else field["name"]
            if match is not None:
                self.check(field["type"], rns, match["type"], wns, where)
            elif "default" not in field:
                self.problems.append(
                    f"{where}: new field without a default; data written before it has no value"
                )


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
                found = found or _round_trip_problems(chain[newer], chain[older])
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


def _round_trip_problems(reader: Schema, writer: Schema, samples: int = 8) -> list[str]:
    # Belt and braces: the rules above are ours; this asks fastavro, which reads the data.
    state = random.getstate()
    random.seed(0)  # fastavro's generator uses the global generator: make it repeatable
    try:
        records = list(fastavro.utils.generate_many(writer, samples))
    finally:
        random.setstate(state)
    parsed_writer = fastavro.parse_schema(writer)
    parsed_reader = fastavro.parse_schema(reader)
    for record in records:
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, parsed_writer, record)
            buffer.seek(0)
            fastavro.schemaless_reader(buffer, parsed_writer, parsed_reader)
        except Exception as exc:  # fastavro raises many types; each one is a finding here
            return [f"fastavro could not resolve a generated record: {exc!r}"]
    return []
