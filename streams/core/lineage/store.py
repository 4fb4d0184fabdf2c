"""Where the lineage joiner keeps study states: a small protocol and two stores.

:class:`InMemoryStudyStore` keeps state objects (offline replay, tests);
:class:`MappingStudyStore` keeps encoded bytes (:mod:`streams.core.lineage.codec`) in any
``MutableMapping[str, bytes]``, such as a Faust table backed by RocksDB, so the live
runtime persists the join without the join knowing. The same contract tests run
against both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Protocol

from streams.core.lineage.codec import decode_state, encode_state
from streams.core.lineage.state import StudyKey, StudyState

__all__ = ["RESERVED_PREFIX", "InMemoryStudyStore", "MappingStudyStore", "StudyStore"]

RESERVED_PREFIX = "\x00"
"""Mapping keys starting with this are not studies (study keys are JSON arrays)."""


class StudyStore(Protocol):
    """Where the joiner keeps study states. Implementations need no locking: one
    joiner owns a store (in the live runtime, one per partition assignment)."""

    def get(self, key: StudyKey) -> StudyState | None:
        """Returns the state of a study, or None when there is none."""

    def put(self, key: StudyKey, state: StudyState) -> None:
        """Stores the state of a study, replacing any previous one."""

    def delete(self, key: StudyKey) -> None:
        """Forgets a study; no error if it is absent."""

    def items(self) -> Iterator[tuple[StudyKey, StudyState]]:
        """Yields every stored study; used to rebuild the expiry index."""


class InMemoryStudyStore:
    """A :class:`StudyStore` holding state objects in a dict (no encoding)."""

    def __init__(self) -> None:
        self._states: dict[StudyKey, StudyState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: StudyKey) -> StudyState | None:
        return self._states.get(key)

    def put(self, key: StudyKey, state: StudyState) -> None:
        self._states[key] = state

    def delete(self, key: StudyKey) -> None:
        self._states.pop(key, None)

    def items(self) -> Iterator[tuple[StudyKey, StudyState]]:
        return iter(list(self._states.items()))


class MappingStudyStore:
    """A :class:`StudyStore` over encoded bytes in any mutable mapping.

    Keys are encoded as the JSON array ``[site_id, study_uid]``, values with
    :func:`encode_state`. Give it a Faust table and the state is persisted by its
    changelog; give it a dict and the tests exercise the encoding on every event.
    Keys starting with NUL are not studies: the owner of the mapping keeps its own
    records there (the live worker its applied offsets), and they are left alone.
    """

    def __init__(self, mapping: MutableMapping[str, bytes]) -> None:
        self._mapping = mapping

    def __len__(self) -> int:
        return sum(1 for key in self._mapping if not key.startswith(RESERVED_PREFIX))

    @staticmethod
    def encode_key(key: StudyKey) -> str:
        """Returns the mapping key of a study."""
        return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)

    @staticmethod
    def decode_key(raw: str) -> StudyKey:
        """Returns the study key encoded by :meth:`encode_key`."""
        site_id, study_uid = json.loads(raw)
        return (str(site_id), str(study_uid))

    def get(self, key: StudyKey) -> StudyState | None:
        raw = self._mapping.get(self.encode_key(key))
        return None if raw is None else decode_state(raw)

    def put(self, key: StudyKey, state: StudyState) -> None:
        self._mapping[self.encode_key(key)] = encode_state(state)

    def delete(self, key: StudyKey) -> None:
        self._mapping.pop(self.encode_key(key), None)

    def items(self) -> Iterator[tuple[StudyKey, StudyState]]:
        for raw_key, raw in list(self._mapping.items()):
            if not raw_key.startswith(RESERVED_PREFIX):
                yield self.decode_key(raw_key), decode_state(raw)
