"""The file registry, the BACKWARD compatibility rules and the repository check."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas.compatibility import backward_problems
from schemas.errors import IncompatibleSchemaError, SchemaError, SchemaNotFoundError
from schemas.file_registry import (
    REGISTRY_DIR,
    FileSchemaRegistry,
    check_repository,
    register_changed,
    schema_id_of,
)
from schemas.http_registry import HttpSchemaRegistry
from schemas.registry import open_registry, registry_from_environ
from schemas.subjects import AVSC_DIR, load_avsc

INFERENCE = "imgov.events.v1.InferenceEvent"
REPORT = "imgov.events.v1.ReportEvent"


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the .avsc files and the registry to change freely."""
    avsc, registry = tmp_path / "avro", tmp_path / "registry"
    shutil.copytree(AVSC_DIR, avsc)
    shutil.copytree(REGISTRY_DIR, registry)
    return avsc, registry


def _edit_avsc(avsc: Path, name: str, change: Any) -> None:
    path = avsc / f"{name}.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    change(schema["fields"])
    path.write_text(json.dumps(schema, indent=2), encoding="utf-8")


# --- the file registry --------------------------------------------------------------------


def test_the_repository_registry_matches_the_avsc_files() -> None:
    assert check_repository() == []


def test_ids_are_derived_from_content(registry: FileSchemaRegistry) -> None:
    for subject in registry.subjects():
        for entry in registry.versions(subject):
            assert entry.schema_id == schema_id_of(entry.schema)
            assert registry.schema_by_id(entry.schema_id) == entry.schema
            assert 0 < entry.schema_id < 2**31


def test_every_current_schema_is_registered_and_inference_keeps_its_v1(
    registry: FileSchemaRegistry,
) -> None:
    for subject, schema in load_avsc().items():
        assert registry.id_for(subject, schema) == registry.versions(subject)[-1].schema_id
    inference = registry.versions(INFERENCE)
    assert [v.version for v in inference] == [1, 2]
    assert "manufacturer" not in json.dumps(inference[0].schema)


def test_unknown_ids_and_subjects(registry: FileSchemaRegistry) -> None:
    with pytest.raises(SchemaNotFoundError, match="schema id 3"):
        registry.schema_by_id(3)
    with pytest.raises(SchemaNotFoundError, match="imgov schemas register"):
        registry.id_for(INFERENCE, {"type": "record", "name": "X", "fields": []})
    assert registry.versions("no.such.Subject") == []


def test_register_appends_a_compatible_version_deterministically(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    avsc, registry_dir = repo
    twin = tmp_path / "twin"
    shutil.copytree(registry_dir, twin)
    _edit_avsc(avsc, "ReportEvent", lambda f: f.append(
        {"name": "priority", "type": ["null", "string"], "default": None}))  # fmt: skip
    added = register_changed(avsc, registry_dir)
    assert [(a.subject, a.version) for a in added] == [(REPORT, 2)]
    assert register_changed(avsc, twin) == added  # same content, same id, same file
    name = f"{REPORT}.json"
    assert (registry_dir / name).read_bytes() == (twin / name).read_bytes()
    assert register_changed(avsc, registry_dir) == []
    assert check_repository(avsc, registry_dir) == []
    reloaded = FileSchemaRegistry(registry_dir)
    assert reloaded.register(REPORT, load_avsc(avsc)[REPORT]) == added[0]  # idempotent


def test_register_refuses_an_incompatible_version(repo: tuple[Path, Path]) -> None:
    avsc, registry_dir = repo
    before = (registry_dir / f"{REPORT}.json").read_bytes()
    _edit_avsc(avsc, "ReportEvent", lambda f: f.append({"name": "ward", "type": "string"}))
    with pytest.raises(IncompatibleSchemaError) as caught:
        register_changed(avsc, registry_dir)
    assert any("ward: new field without a default" in p for p in caught.value.problems)
    assert (registry_dir / f"{REPORT}.json").read_bytes() == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["versions"][0].update(id=5), "does not match its schema"),
        (lambda d: d["versions"][0].update(version=3), "without gaps"),
        (lambda d: d.update(versions="x"), "malformed"),
    ],
)
def test_a_tampered_registry_file_is_refused(
    repo: tuple[Path, Path], mutate: Any, message: str
) -> None:
    _, registry_dir = repo
    path = registry_dir / f"{INFERENCE}.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    mutate(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(SchemaError, match=message):
        FileSchemaRegistry(registry_dir)


def test_selection_by_settings(tmp_path: Path) -> None:
    assert isinstance(open_registry(None), FileSchemaRegistry)
    assert isinstance(registry_from_environ({}), FileSchemaRegistry)
    assert isinstance(registry_from_environ({"IMGOV_SCHEMA_REGISTRY_URL": " "}), FileSchemaRegistry)
    chosen = registry_from_environ({"IMGOV_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"})
    assert isinstance(chosen, HttpSchemaRegistry)


# --- the repository check -----------------------------------------------------------------


def test_check_catches_a_new_field_without_default(repo: tuple[Path, Path]) -> None:
    avsc, registry_dir = repo
    _edit_avsc(avsc, "InferenceEvent", lambda f: f.append({"name": "scanner", "type": "string"}))
    problems = check_repository(avsc, registry_dir)
    assert any("differs from version 2" in p and "imgov schemas register" in p for p in problems)
    assert any(
        "v3 cannot read data written by v1" in p and "scanner: new field without a default" in p
        for p in problems
    )
    assert any("v3 cannot read data written by v2" in p for p in problems)


def test_check_asks_to_register_a_compatible_change(repo: tuple[Path, Path]) -> None:
    avsc, registry_dir = repo
    _edit_avsc(avsc, "AlertEvent", lambda f: f.pop())  # removing a field is compatible
    problems = check_repository(avsc, registry_dir)
    assert len(problems) == 1 and "register it as version 2" in problems[0]


def test_check_catches_a_deleted_contract_and_a_renamed_file(repo: tuple[Path, Path]) -> None:
    avsc, registry_dir = repo
    (avsc / "Breach.avsc").unlink()
    assert check_repository(avsc, registry_dir) == [
        f"imgov.governance.v1.Breach is registered but {avsc}/ has no .avsc for it"
    ]
    (avsc / "KpiValue.avsc").rename(avsc / "Kpi.avsc")
    with pytest.raises(SchemaError, match=r"file name must be the record name KpiValue\.avsc"):
        check_repository(avsc, registry_dir)


# --- the resolution rules -----------------------------------------------------------------


def _record(*fields: dict[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields)}


def _field(name: str, kind: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, **extra}


COLOURS = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}


@pytest.mark.parametrize(
    ("reader", "writer"),
    [
        (_record(_field("a", "long")), _record(_field("a", "int"))),
        (_record(_field("a", "double")), _record(_field("a", "float"))),
        (_record(_field("a", "float")), _record(_field("a", "long"))),
        (_record(_field("a", "bytes")), _record(_field("a", "string"))),
        (_record(_field("a", "string")), _record(_field("a", "bytes"))),
        (_record(), _record(_field("gone", "string"))),
        (_record(_field("new", "int", default=0)), _record()),
        (_record(_field("a", ["null", "string"], default=None)), _record(_field("a", "string"))),
        (_record(_field("a", ["null", "long"])), _record(_field("a", ["null", "int"]))),
        (_record(_field("c", dict(COLOURS, symbols=["RED", "GREEN", "BLUE"]))),
         _record(_field("c", COLOURS))),
        (_record(_field("c", dict(COLOURS, symbols=["RED"], default="RED"))),
         _record(_field("c", COLOURS))),
        (_record(_field("xs", {"type": "array", "items": "long"}, default=[])),
         _record(_field("xs", {"type": "array", "items": "int"}))),
        (_record(_field("m", {"type": "map", "values": "double"})),
         _record(_field("m", {"type": "map", "values": "int"}))),
        (_record(_field("b", "long", aliases=["a"])), _record(_field("a", "int"))),
        (_record(name="New") | {"aliases": ["R"]}, _record()),
        (_record(_field("c", COLOURS), _field("d", "Colour")),
         _record(_field("c", COLOURS), _field("d", "t.Colour"))),
        (_record(_field("ts", {"type": "long", "logicalType": "timestamp-millis"})),
         _record(_field("ts", "long"))),
    ],
)  # fmt: skip
def test_compatible_pairs(reader: dict[str, Any], writer: dict[str, Any]) -> None:
    assert backward_problems(reader, writer) == []


@pytest.mark.parametrize(
    ("reader", "writer", "message"),
    [
        (_record(_field("a", "int")), _record(_field("a", "long")), "a: writer type long cannot"),
        (_record(_field("a", "string")), _record(_field("a", "int")), "writer type int cannot"),
        (_record(_field("new", "int")), _record(), "new: new field without a default"),
        (_record(_field("a", "string")), _record(_field("a", ["null", "string"])),
         "a: writer type null cannot be read as string"),
        (_record(_field("a", ["null", "int"])), _record(_field("a", "string")),
         "a: writer type string matches no branch"),
        (_record(_field("c", dict(COLOURS, symbols=["RED"]))), _record(_field("c", COLOURS)),
         "c: reader enum t.Colour lacks writer symbols ['GREEN']"),
        (_record(name="Other"), _record(), "writer t.R is not the reader's t.Other"),
        (_record(_field("xs", {"type": "array", "items": "int"})),
         _record(_field("xs", {"type": "array", "items": "string"})), "xs[]: writer type string"),
        (_record(_field("n", _record(_field("deep", "int"), name="N"))),
         _record(_field("n", _record(name="N"))), "n.deep: new field without a default"),
        (_record(_field("f", {"type": "fixed", "name": "F", "size": 4})),
         _record(_field("f", {"type": "fixed", "name": "F", "size": 8})), "fixed size 8"),
    ],
)  # fmt: skip
def test_incompatible_pairs(reader: dict[str, Any], writer: dict[str, Any], message: str) -> None:
    problems = backward_problems(reader, writer)
    assert any(message in p for p in problems), problems


def test_recursive_records_terminate() -> None:
    node = _record(_field("next", ["null", "R"], default=None), _field("v", "int"))
    wider = copy.deepcopy(node)
    wider["fields"][1]["type"] = "long"
    assert backward_problems(wider, node) == []
    assert backward_problems(node, wider) != []
