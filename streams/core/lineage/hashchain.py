"""The tamper-evident hash chain over lineage revisions (DESIGN §4, §8).

Each revision of a lineage key carries ``prev_hash`` (the ``record_hash`` of the
revision before it, None for revision 1) and ``record_hash`` = SHA-256 hex of the
canonical JSON of every field of the record except ``record_hash`` itself. The hash
therefore covers the content, the revision number and the link: altering any field
of a stored row, dropping a revision or re-linking one is visible to
:func:`verify_chain`, which ``imgov audit verify`` runs over ``lineage_history``.

Two records with equal *content* reached through different event orders may have
different revision numbers and so different ``record_hash`` values.
:func:`content_hash` hashes the content alone (everything except ``revision``,
``prev_hash`` and ``record_hash``), so equal content gives an equal content hash
whatever path led to it; the determinism tests compare it.

Canonical JSON: keys sorted, no whitespace, UTF-8, enums as their values, floats in
Python's shortest round-trip form (:func:`canonical_json`; the joiner takes a faster
path to the same bytes, :func:`hash_fields`). What verify_chain cannot see: the removal of the
*latest* revisions of a key, or of a key's whole history, leaves a chain that is
consistent; the signed audit checkpoints of the chain heads
(:mod:`streams.core.lineage.anchor`) cover it.
"""

from __future__ import annotations

import hashlib
import json
import operator
from _json import make_encoder
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring

from schemas.records import LineageRecord

__all__ = [
    "CHAIN_FIELDS",
    "ChainProblem",
    "ChainProblemKind",
    "LineageKey",
    "canonical_json",
    "content_hash",
    "hash_fields",
    "lineage_key",
    "record_hash",
    "verify_chain",
]

CHAIN_FIELDS = frozenset({"revision", "prev_hash", "record_hash"})
"""The fields that depend on the revision history rather than on the content."""

LineageKey = tuple[str, str, str, str]
"""(site_id, study_uid, algorithm_name, finding_code)."""


# One encoder for every call: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(fields: Mapping[str, object]) -> bytes:
    """Returns the canonical JSON bytes of a mapping of record fields."""
    return _CANONICAL.encode(fields).encode()


def hash_fields(fields: Mapping[str, object]) -> str:
    """Returns the SHA-256 hex of the canonical JSON of ``fields``.

    Called by the joiner on the fields it is about to build a record from (all of
    them except ``record_hash``), which saves dumping the record again; those take
    the faster path of :func:`_record_json`, with the same bytes.
    """
    return hashlib.sha256(_record_json(fields) or canonical_json(fields)).hexdigest()


# --- the joiner's path -------------------------------------------------------------------
#
# The canonical JSON of a record's fields is the largest single cost of a revision, and
# about a quarter of it is the generic encoder's work on the keys: sorting the items and
# escaping every key again. The keys are known, so their text is made once here and only
# the values are encoded, in one call of the same C encoder with the same options (so
# each value's text is the one canonical_json writes), as a list whose items are split
# apart on a separator that cannot occur in JSON text: the encoder escapes every control
# character inside strings. Anything unexpected falls back to canonical_json.

_HASHED_FIELDS = tuple(sorted(set(LineageRecord.model_fields) - {"record_hash"}))
_hashed_values = operator.itemgetter(*_HASHED_FIELDS)
_KEY_TEXTS = tuple(
    ("{" if i == 0 else ",") + encode_basestring(name) + ":"
    for i, name in enumerate(_HASHED_FIELDS)
)
_TEMPLATE = "".join(key.replace("%", "%%") + "%s" for key in _KEY_TEXTS) + "}"
_SEPARATOR = "\x00"
_LIST_FIELD = _HASHED_FIELDS.index("event_ids")
"""The one field whose value is itself a list: encoded apart, since its items would be
split on the separator too."""
_values_encoder = make_encoder(
    None, _CANONICAL.default, encode_basestring, None, ":", _SEPARATOR, True, False, True
)
_compact_encoder = make_encoder(
    None, _CANONICAL.default, encode_basestring, None, ":", ",", True, False, True
)


def _record_json(fields: Mapping[str, object]) -> bytes | None:
    """Returns ``canonical_json(fields)`` for exactly a record's hashed fields, else None."""
    if len(fields) != len(_KEY_TEXTS):
        return None
    try:
        values = list(_hashed_values(fields))
    except KeyError:
        return None  # other fields than a record's
    nested = values[_LIST_FIELD]
    values[_LIST_FIELD] = None
    texts = "".join(_values_encoder(values, 0))[1:-1].split(_SEPARATOR)
    if len(texts) != len(_KEY_TEXTS):
        return None  # another value held a list or mapping of several items
    texts[_LIST_FIELD] = "".join(_compact_encoder(nested, 0))
    return (_TEMPLATE % tuple(texts)).encode()


def record_hash(record: LineageRecord) -> str:
    """Returns the ``record_hash`` the record should carry (all fields but itself)."""
    return hash_fields(record.model_dump(exclude={"record_hash"}))


def content_hash(record: LineageRecord) -> str:
    """Returns a hash of the record's content, independent of its revision history."""
    return hash_fields(record.model_dump(exclude=set(CHAIN_FIELDS)))


def lineage_key(record: LineageRecord) -> LineageKey:
    """Returns the key the record is a revision of."""
    return (record.site_id, record.study_uid, record.algorithm_name, record.finding_code)


class ChainProblemKind(StrEnum):
    """What :func:`verify_chain` found wrong."""

    ALTERED = "ALTERED"
    """The row's stored ``record_hash`` does not match its content."""
    MISSING_REVISION = "MISSING_REVISION"
    """A revision number is absent (the chain must start at 1 and have no gaps)."""
    BROKEN_LINK = "BROKEN_LINK"
    """``prev_hash`` is not the ``record_hash`` of the revision before."""
    CONFLICTING_REVISION = "CONFLICTING_REVISION"
    """Two different rows claim the same key and revision."""


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One problem in the history of one lineage key."""

    kind: ChainProblemKind
    key: LineageKey
    revision: int
    detail: str


def verify_chain(records: Iterable[LineageRecord]) -> list[ChainProblem]:
    """Checks the hash chains of lineage revisions of any number of keys.

    Args:
        records: revisions in any order; exact duplicates (a redelivered row) are
            harmless.

    Returns:
        The problems found, sorted by key and revision; empty when every chain
        verifies.
    """
    by_key: dict[LineageKey, dict[int, list[LineageRecord]]] = defaultdict(dict)
    for record in records:
        revisions = by_key[lineage_key(record)].setdefault(record.revision, [])
        if record not in revisions:
            revisions.append(record)
    problems: list[ChainProblem] = []
    for key in sorted(by_key):
        problems.extend(_verify_key(key, by_key[key]))
    return problems


def _verify_key(key: LineageKey, revisions: dict[int, list[LineageRecord]]) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    previous: LineageRecord | None = None
    expected_revision = 1
    for revision in sorted(revisions):
        rows = revisions[revision]
        if len(rows) > 1:
            problems.append(
                ChainProblem(
                    ChainProblemKind.CONFLICTING_REVISION,
                    key,
                    revision,
                    f"{len(rows)} different rows claim this revision",
                )
            )
        row = rows[0]
        if row.record_hash != record_hash(row):
            problems.append(
                ChainProblem(
                    ChainProblemKind.ALTERED, key, revision, "record_hash does not match the row"
                )
            )
        if revision != expected_revision:
            missing = (
                f"{expected_revision}"
                if revision == expected_revision + 1
                else (f"{expected_revision}..{revision - 1}")
            )
            problems.append(
                ChainProblem(
                    ChainProblemKind.MISSING_REVISION, key, revision, f"revision {missing} missing"
                )
            )
        elif revision == 1 and row.prev_hash is not None:
            problems.append(
                ChainProblem(
                    ChainProblemKind.BROKEN_LINK, key, revision, "revision 1 has a prev_hash"
                )
            )
        elif previous is not None and row.prev_hash != previous.record_hash:
            problems.append(
                ChainProblem(
                    ChainProblemKind.BROKEN_LINK,
                    key,
                    revision,
                    "prev_hash is not the record_hash of the revision before",
                )
            )
        previous = row
        expected_revision = revision + 1
    return problems
