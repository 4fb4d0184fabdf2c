"""The .avsc contracts and the pydantic models agree, field by field, in both directions."""

from __future__ import annotations

import json
import types
import typing
from enum import StrEnum
from typing import Any

import fastavro
import fastavro.schema
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.codec import EVENT_SUBJECTS, MODELS_BY_SUBJECT
from schemas.subjects import AVSC_DIR, load_avsc

DURATIONS = {"time_to_result_ms", "time_to_alert_ms", "time_to_response_ms", "report_tat_ms"}
ENUM_DEFAULTS = {"AlertChannel": "OTHER"}
SCALARS: dict[Any, set[str]] = {
    str: {"string"},
    bytes: {"bytes"},
    bool: {"boolean"},
    int: {"int", "long"},
    float: {"double"},
}


def _avro_default(model_default: Any) -> Any:
    return list(model_default) if isinstance(model_default, tuple) else model_default


def _assert_type(path: str, annotation: Any, avro: Any) -> None:
    """``annotation`` (a non-optional model type) and ``avro`` (expanded) describe one type."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item, ellipsis = typing.get_args(annotation)
        assert ellipsis is Ellipsis, path
        assert isinstance(avro, dict) and avro["type"] == "array", f"{path}: {avro}"
        _assert_type(f"{path}[]", item, avro["items"])
    elif isinstance(annotation, type) and issubclass(annotation, StrEnum):
        assert isinstance(avro, dict) and avro["type"] == "enum", f"{path}: {avro}"
        assert avro["name"].rpartition(".")[2] == annotation.__name__, path
        assert avro["symbols"] == [member.value for member in annotation], path
        assert all(symbol.isupper() for symbol in avro["symbols"]), path
        assert avro.get("default") == ENUM_DEFAULTS.get(annotation.__name__), path
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        assert isinstance(avro, dict) and avro["type"] == "record", f"{path}: {avro}"
        assert avro["name"].rpartition(".")[2] == annotation.__name__, path
        _assert_record(path, annotation, avro)
    else:
        kind = avro["type"] if isinstance(avro, dict) else avro
        assert kind in SCALARS[annotation], f"{path}: model {annotation} vs Avro {avro}"


def _assert_field(path: str, name: str, info: FieldInfo, avro_field: dict[str, Any]) -> None:
    annotation = info.annotation
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
        type(None) in args
    )
    avro_type = avro_field["type"]
    if optional:
        (inner,) = (a for a in args if a is not type(None))
        assert isinstance(avro_type, list) and avro_type[0] == "null", f"{path}: not nullable"
        assert len(avro_type) == 2, path
        assert info.default is None and avro_field.get("default", "absent") is None, path
        _assert_type(path, inner, avro_type[1])
        avro_type = avro_type[1]
    else:
        assert not isinstance(avro_type, list), f"{path}: nullable in Avro, required in model"
        _assert_type(path, annotation, avro_type)
        if info.is_required():
            assert "default" not in avro_field, f"{path}: Avro default for a required field"
        else:
            default = info.get_default(call_default_factory=True)
            assert avro_field.get("default", "absent") == _avro_default(default), path
    if name.endswith("_ms"):
        assert isinstance(avro_type, dict) or avro_type == "long", path
        kind = avro_type["type"] if isinstance(avro_type, dict) else avro_type
        assert kind == "long", f"{path}: milliseconds must be long"
        logical = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
        expected = None if name in DURATIONS else "timestamp-millis"
        assert logical == expected, f"{path}: logicalType {logical}, expected {expected}"


def _assert_record(path: str, model: type[BaseModel], avro: dict[str, Any]) -> None:
    avro_fields = {f["name"]: f for f in avro["fields"]}
    assert list(avro_fields) == list(model.model_fields), f"{path}: field names or order differ"
    for name, info in model.model_fields.items():
        _assert_field(f"{path}.{name}", name, info, avro_fields[name])


@pytest.mark.parametrize("subject", sorted(MODELS_BY_SUBJECT))
def test_schema_and_model_agree_field_by_field(subject: str) -> None:
    schema = load_avsc()[subject]
    _assert_record(subject, MODELS_BY_SUBJECT[subject], fastavro.schema.expand_schema(schema))


@pytest.mark.parametrize("subject", sorted(MODELS_BY_SUBJECT))
def test_namespace_follows_the_kind_of_record(subject: str) -> None:
    namespace = load_avsc()[subject]["namespace"]
    expected = "imgov.events.v1" if subject in EVENT_SUBJECTS else "imgov.governance.v1"
    assert namespace == expected


def test_every_avsc_is_one_named_record_of_a_known_model() -> None:
    files = sorted(AVSC_DIR.glob("*.avsc"))
    assert len(files) == len(MODELS_BY_SUBJECT)
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert schema["type"] == "record" and schema["name"] == path.stem
        fastavro.parse_schema(schema)  # defaults are checked against their types here
    assert set(load_avsc()) == set(MODELS_BY_SUBJECT)


def test_the_checker_notices_a_disagreement() -> None:
    from schemas.events import InferenceEvent

    schema = fastavro.schema.expand_schema(load_avsc()["imgov.events.v1.InferenceEvent"])
    fields = schema["fields"]
    renamed = [dict(f, name="mfr") if f["name"] == "manufacturer" else f for f in fields]
    with pytest.raises(AssertionError, match="field names"):
        _assert_record("InferenceEvent", InferenceEvent, dict(schema, fields=renamed))
    nullable = dict(type=["null", "string"], default=None)
    widened = dict(
        schema, fields=[dict(f, **nullable) if f["name"] == "modality" else f for f in fields]
    )
    with pytest.raises(AssertionError, match="nullable in Avro"):
        _assert_record("InferenceEvent", InferenceEvent, widened)
