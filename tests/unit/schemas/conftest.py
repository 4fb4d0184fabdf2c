"""Fixtures for the schemas tests: the repository's registry, a codec, sample events."""

from __future__ import annotations

import pytest

from schemas.codec import Codec
from schemas.corpus import sample_events
from schemas.events import Event
from schemas.file_registry import FileSchemaRegistry
from schemas.validation import EventValidator

NOW_MS = 1_760_000_000_000
"""The injected clock of every test: 2025-10-09T08:53:20Z."""


@pytest.fixture(scope="session")
def registry() -> FileSchemaRegistry:
    return FileSchemaRegistry()


@pytest.fixture(scope="session")
def validator() -> EventValidator:
    return EventValidator(lambda: NOW_MS)


@pytest.fixture()
def codec(registry: FileSchemaRegistry, validator: EventValidator) -> Codec:
    return Codec(registry, validator=validator)


@pytest.fixture(scope="session")
def events() -> list[Event]:
    return sample_events(300, seed=7, end_ms=NOW_MS)
