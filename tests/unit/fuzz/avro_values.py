"""Hypothesis strategies for values that fit an Avro schema, for structure-aware fuzzing.

A record written with a registered schema is valid Avro whatever its values, so it
reaches the parts of the decoder behind the binary format: the schema resolution of
older writers, the model's types and the contract's value rules.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["avro_value"]

_NOW_MS = 1_760_000_000_000
_LONGS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(_NOW_MS - 400 * 86_400_000, _NOW_MS + 30 * 86_400_000),  # around the clock
    st.sampled_from((0, -1, 946_684_800_000, 253_402_300_800_000)),
)
_TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from(("", " ", "1.2.840.113619.2.55.3", "site-01", "PE", "\x00", "é" * 70)),
)


def avro_value(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (a schema as JSON, logical types ignored) fastavro can write."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of([avro_value(branch, named) for branch in schema])
    if isinstance(schema, str):
        if schema in named:
            return avro_value(named[schema], named)
        return _primitive(schema)
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: avro_value(f["type"], named) for f in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(avro_value(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), avro_value(schema["values"], named), max_size=3)
    return _primitive(kind)


def _primitive(kind: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": _LONGS,
        "float": st.floats(width=32),
        "double": st.floats(),
        "string": _TEXT,
        "bytes": st.binary(max_size=16),
    }[kind]
