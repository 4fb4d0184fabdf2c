"""BACKWARD compatibility of Avro schemas: can a new reader read old writers' data?

``backward_problems`` applies the Avro specification's schema resolution rules;
``round_trip_problems`` asks fastavro to read generated records. The file registry
refuses to register a version that cannot read its predecessors' data, and
``imgov schemas check`` runs both over every version (``schemas.file_registry``).
"""

from __future__ import annotations

import io
import random
from typing import Any, TypeAlias

import fastavro
import fastavro.utils

from schemas.subjects import Schema, full_name

__all__ = ["backward_problems", "round_trip_problems"]

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


def round_trip_problems(reader: Schema, writer: Schema, samples: int = 8) -> list[str]:
    """Lists why fastavro cannot read, with ``reader``, records written with ``writer``.

    Writes ``samples`` records generated from ``writer`` (repeatably) and reads them back.

    Returns:
        The first failure, as one line; empty when every record was read.
    """
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
