"""What the lineage joiner returns: revisions, dead letters, and how records are built.

Outputs are data (STYLE rule 4): the runtime maps them to the lineage topic and tables,
to the KPI aggregator (``old`` retracted, ``new`` added) and to the dead-letter topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from schemas.events import Event
from schemas.records import DeadLetter, LineageRecord
from streams.core.lineage.hashchain import hash_fields
from streams.core.lineage.outcome import RecordContent
from streams.core.lineage.state import RowMeta

__all__ = [
    "EMPTY_OUTPUT",
    "JoinOutput",
    "LineageRevision",
    "build_record",
    "chain_record",
    "event_json_bytes",
]


@dataclass(frozen=True, slots=True)
class LineageRevision:
    """A new revision of one lineage key and the one it replaces.

    Attributes:
        old: the previous revision (retract its contribution), None for revision 1.
        new: the new revision (add its contribution; write it to the lineage outputs).
    """

    old: LineageRecord | None
    new: LineageRecord


@dataclass(frozen=True, slots=True)
class JoinOutput:
    """What one call of the joiner produced. Empty for a duplicate event.

    Attributes:
        revisions: new lineage revisions, in a reproducible order.
        dead_letters: events the join refused (LATE_AFTER_EVICTION, OVERSIZED), with
            the event's canonical JSON as ``value``; the runtime fills in the source
            topic, partition, offset, key and headers.
    """

    revisions: tuple[LineageRevision, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.revisions or self.dead_letters)

    @property
    def records(self) -> tuple[LineageRecord, ...]:
        """The new lineage revisions alone."""
        return tuple(r.new for r in self.revisions)


EMPTY_OUTPUT = JoinOutput()
"""The output of a call that changed nothing."""


def event_json_bytes(event: Event) -> bytes:
    """Returns the canonical JSON Lines form of an event (with its ``event_type``)."""
    payload = event.model_dump(mode="json")
    payload["event_type"] = event.event_type.value
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_RECORD_FIELDS = tuple(LineageRecord.model_fields)
_CONTENT_FIELDS = tuple(RecordContent.__annotations__)
# Records keep their fields in declaration order, as validation would: serialisers follow
# the order of __dict__. The content of a row (outcome.derive_contents) comes in the
# order of RecordContent, which is that of the record without the chain fields;
# ``revision`` sits before the last content field, the other two come at the end.
_IN_FIELD_ORDER = (
    *_CONTENT_FIELDS[:-1],
    "revision",
    _CONTENT_FIELDS[-1],
    "prev_hash",
    "record_hash",
) == _RECORD_FIELDS
_LAST_CONTENT_FIELD = _CONTENT_FIELDS[-1]
_new_record = LineageRecord.__new__
_set = object.__setattr__
# Every record sets every field, so all share one fields-set: pydantic only reads it, or
# copies it before a change (model_copy), and adding a field it holds changes nothing.
_ALL_FIELDS_SET = set(_RECORD_FIELDS)


def build_record(content: RecordContent, meta: RowMeta) -> LineageRecord:
    """Builds the record of a revision from content this module derived from validated events.

    What ``model_construct`` does, without its per-field alias handling, which costs
    more than the rest of the join for a 47-field record. A unit test checks the result
    equals the validated record. The content dict becomes the record's: the caller
    must not use it after.
    """
    return _record(_chain_fields(content, meta.revision, meta.prev_hash), meta.record_hash)


def chain_record(content: RecordContent, revision: int, prev_hash: str | None) -> LineageRecord:
    """Builds a new revision of a row: its ``record_hash`` is computed here.

    Args:
        content: the row's new content (``outcome.derive_contents``); it becomes the
            record's, so the caller must not use it after.
        revision: 1 for a new row, else the previous revision + 1.
        prev_hash: the ``record_hash`` of the previous revision, None for revision 1.
    """
    fields = _chain_fields(content, revision, prev_hash)
    return _record(fields, hash_fields(fields))


def _chain_fields(
    content: RecordContent, revision: int, prev_hash: str | None
) -> dict[str, object]:
    # Every field but record_hash, in field order: what the hash covers. Contents come
    # in RecordContent order (a unit test checks derive_contents keeps it). The content
    # dict is fresh from derive_contents and is taken over rather than copied.
    fields = cast("dict[str, object]", content)
    if _IN_FIELD_ORDER:
        last = fields.pop(_LAST_CONTENT_FIELD)
        fields["revision"] = revision
        fields[_LAST_CONTENT_FIELD] = last
        fields["prev_hash"] = prev_hash
        return fields
    fields["revision"] = revision
    fields["prev_hash"] = prev_hash
    return {name: fields[name] for name in _RECORD_FIELDS if name != "record_hash"}


def _record(fields: dict[str, object], record_hash: str) -> LineageRecord:
    fields["record_hash"] = record_hash
    record = _new_record(LineageRecord)
    _set(record, "__dict__", fields)
    _set(record, "__pydantic_fields_set__", _ALL_FIELDS_SET)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record
