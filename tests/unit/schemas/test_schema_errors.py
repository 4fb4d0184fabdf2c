"""The exception tree, reasons, and the public names of the schemas package."""

from __future__ import annotations

import importlib
import inspect
import pickle

import pytest

from schemas import errors
from schemas.errors import (
    DecodeError,
    ImgovError,
    OversizedError,
    SchemaError,
    UndecodableError,
    UnknownSchemaError,
    ValidationFailedError,
)
from schemas.records import DeadLetterReason

MODULES = [
    "schemas.codec", "schemas.compatibility", "schemas.corpus", "schemas.errors",
    "schemas.events", "schemas.file_registry", "schemas.files", "schemas.http_registry",
    "schemas.records", "schemas.registry", "schemas.subjects", "schemas.units",
    "schemas.validation", "streams.cli.schemas",
]  # fmt: skip


def test_one_root() -> None:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, Exception):
            assert issubclass(cls, ImgovError), cls
    assert not issubclass(DecodeError, SchemaError)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (OversizedError, DeadLetterReason.OVERSIZED),
        (UndecodableError, DeadLetterReason.UNDECODABLE),
        (UnknownSchemaError, DeadLetterReason.UNKNOWN_SCHEMA),
        (ValidationFailedError, DeadLetterReason.VALIDATION_FAILED),
    ],
)
def test_decode_errors_carry_their_reason(cls: type[DecodeError], reason: DeadLetterReason) -> None:
    error = cls("what and where", field="score", schema_id=12)
    assert error.reason is reason and str(error) == "what and where"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and (copy.field, copy.schema_id) == ("score", 12)


def test_the_tree_is_drawn_in_the_docstring() -> None:
    for name in errors.__all__:
        assert name in (errors.__doc__ or ""), name


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_existing_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, n) for n in exported)
    own = {
        n for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == name
        and (inspect.isclass(v) or inspect.isfunction(v))
    }  # fmt: skip
    assert own <= exported, own - exported
