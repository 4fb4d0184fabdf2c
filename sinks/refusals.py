"""Poison batches: a batch the database refuses because of a few of its rows.

A refusal (:class:`sinks.query.DataRefusedError`: a value out of range, of the wrong
type, unparsable, an unknown Enum element) is not an outage: the same rows fail again
however long the sink waits, and every other row of the batch would pass. Retrying the
batch forever would hold the input partition forever, so both audit-table sinks hand a
refused batch to :func:`write_table`, which

1. bisects it (:func:`split_refused`): the refused batch is halved down to one
   offending row (when a half passes, the other is known to hold it and is halved
   without being inserted whole), then the halves not inserted on the way are
   inserted together, and searched the same way if refused. A row counts as refused
   only once it was inserted alone and refused, with its own error text: about
   ``log2(n) + 2`` inserts per offending row of an ``n``-row batch, never more than
   ``max_inserts`` per batch (the rows not isolated by then are dead-lettered too, as
   undecided, rather than looping);
2. writes every other row, and turns each refused one into a ``SINK_REJECTED`` dead
   letter: the row as JSON (its original bytes), its key, the table and the server's
   error. The sink writes those to ``rejected_events``; the live worker also produces
   them to the dead-letter topic before it acknowledges the batch;
3. for ``rejected_events`` itself (a dead letter the table refuses), escapes and
   truncates the row and tries once more; a row refused even then is logged at ERROR
   with a reference to its key (``row_ref``: never the key, never the content) and
   counted as unwritable.

Outages (:class:`sinks.query.BackendUnavailableError`) and statement errors (an
unknown column, a missing grant: splitting cannot help) propagate unchanged from any
insert, so the sink backs off and the batch is written again later, whole: rewriting
the rows a split had already written is idempotent (ReplacingMergeTree).

No I/O of its own: the inserts are a callable, so the unit tests drive the
bisection with a fake that refuses chosen rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from schemas.records import DeadLetter, DeadLetterReason, Header
from sinks.clickhouse.rows import REJECTED_COLUMNS, TABLE_COLUMNS, Row
from sinks.query import DataRefusedError

__all__ = [
    "DEFAULT_MAX_INSERTS",
    "REJECTED_TABLE",
    "TABLE_KEYS",
    "Insert",
    "Split",
    "TableWrite",
    "escape_rejected_row",
    "refused_letter",
    "row_key",
    "row_ref",
    "split_refused",
    "write_table",
]

log = logging.getLogger("imgov.sink")

Insert = Callable[[Sequence[Row]], None]
"""Inserts rows of one table (values in ``TABLE_COLUMNS`` order).

Raises ``DataRefusedError`` when a value is refused, ``BackendUnavailableError`` when
the database cannot be reached, ``QueryError`` for anything else."""

DEFAULT_MAX_INSERTS = 128
"""Inserts one split may make: 1 offending row among 20,000 needs about 17, 8 about 120."""

REJECTED_TABLE = "rejected_events"

TABLE_KEYS: Mapping[str, tuple[str, ...]] = {
    "event_log": ("site_id", "study_uid", "event_id"),
    "lineage_history": ("site_id", "study_uid", "algorithm_name", "finding_code", "revision"),
    "kpi_values": (
        "kpi",
        "window_size",
        "site_id",
        "algorithm_name",
        "algorithm_version",
        "finding_code",
        "window_start_ms",
    ),
    "kpi_breaches": ("breach_id", "state"),
    REJECTED_TABLE: ("source_topic", "source_partition", "source_offset", "reason", "value_sha256"),
    "review_candidates": ("site_id", "study_uid", "algorithm_name", "finding_code"),
}
"""The identity of a row of each table: its ``ORDER BY`` key (a test checks the DDL)."""

_MAX_MESSAGE_CHARS = 2_000
_MAX_ESCAPED_CHARS = 64 * 1024
_MAX_ESCAPED_BYTES = 1024 * 1024
_INT_RANGES = {
    "source_partition": (-(2**31), 2**31 - 1),
    "source_offset": (-(2**63), 2**63 - 1),
    "received_at_ms": (-(2**63), 2**63 - 1),
}
_NULLABLE_REJECTED = frozenset({"key", "event_id", "study_uid"})


# -- bisection ---------------------------------------------------------------------------


@dataclass(slots=True)
class Split:
    """What :func:`split_refused` made of a refused batch; every row is in one place.

    Attributes:
        written: rows inserted (in halves that passed).
        inserts: inserts made, the refused insert of the whole batch included.
        refused: ``(row, error)`` of each row refused when inserted alone.
        undecided: ``(row, error)`` of the rows left when ``max_inserts`` ran out
            (``error``: the last refusal of a batch that held them).
    """

    written: int = 0
    inserts: int = 1
    refused: list[tuple[Row, str]] = field(default_factory=list)
    undecided: list[tuple[Row, str]] = field(default_factory=list)


class _Attempt(Enum):
    WRITTEN = "written"
    REFUSED = "refused"
    SET_ASIDE = "set aside"  # not inserted: the budget ran out, the rows are undecided


class _Splitter:
    def __init__(self, insert: Insert, max_inserts: int) -> None:
        self._insert = insert
        self._max_inserts = max_inserts
        self.split = Split()

    def attempt(self, rows: Sequence[Row], why: str) -> tuple[_Attempt, str]:
        """Inserts ``rows`` unless the budget ran out; returns what happened and, when
        refused, the refusal's text (else ``why``, the refusal that led here)."""
        split = self.split
        if split.inserts >= self._max_inserts:
            self.set_aside(rows, why)
            return _Attempt.SET_ASIDE, why
        split.inserts += 1
        try:
            self._insert(rows)
        except DataRefusedError as exc:
            return _Attempt.REFUSED, str(exc)
        split.written += len(rows)
        return _Attempt.WRITTEN, why

    def set_aside(self, rows: Sequence[Row], why: str) -> None:
        """Leaves ``rows`` undecided: the inserts ran out before they were isolated."""
        self.split.undecided.extend((row, why) for row in rows)

    def run(self, rows: Sequence[Row], error: str) -> None:
        """Isolates the refused rows of ``rows``, inserted together and refused (``error``).

        Binary splitting: halve the batch known to hold a refused row down to that row
        (a half that passes proves the other holds it, so it is halved without being
        inserted whole), set aside the halves not inserted on the way, then insert them
        together: written, or refused and searched the same way.
        """
        pending, why = list(rows), error
        while pending:
            rest: list[Row] = []  # halves not inserted yet, in their original order
            chunk, chunk_error, inserted = pending, why, True
            while len(chunk) > 1:
                middle = len(chunk) // 2
                left, right = chunk[:middle], chunk[middle:]
                outcome, left_error = self.attempt(left, chunk_error)
                if outcome is _Attempt.SET_ASIDE:
                    self.set_aside(right + rest, chunk_error)
                    return
                if outcome is _Attempt.WRITTEN:
                    # The whole was refused and its left half passed: the right holds it.
                    chunk, inserted = right, False
                else:
                    rest = right + rest
                    chunk, chunk_error, inserted = left, left_error, True
            if inserted:
                self.split.refused.append((chunk[0], chunk_error))
            else:
                # Inferred only: a row becomes a dead letter on its own refusal, never on
                # a guess (a refusal that depends on the batch, e.g. its size, ends here).
                outcome, own = self.attempt(chunk, chunk_error)
                if outcome is _Attempt.REFUSED:
                    self.split.refused.append((chunk[0], own))
                elif outcome is _Attempt.SET_ASIDE:
                    self.set_aside(rest, chunk_error)
                    return
            if not rest:
                return
            outcome, why = self.attempt(rest, chunk_error)
            if outcome is not _Attempt.REFUSED:
                return
            pending = rest


def split_refused(
    rows: Sequence[Row], insert: Insert, error: str, *, max_inserts: int = DEFAULT_MAX_INSERTS
) -> Split:
    """Writes the rows of a refused batch that pass and isolates the ones that do not.

    Args:
        rows: a batch of one table, already inserted whole and refused.
        insert: inserts rows of that table.
        error: the text of that refusal.
        max_inserts: inserts allowed, the refused one of the whole batch included.

    Returns:
        Where each row ended: written, refused alone, or undecided.

    Raises:
        BackendUnavailableError: the database became unreachable during the split
            (rows may have been written: writing them again is idempotent).
        QueryError: an insert failed for another reason than its values.
    """
    splitter = _Splitter(insert, max(max_inserts, 1))
    splitter.run(rows, error)
    return splitter.split


# -- dead letters ------------------------------------------------------------------------


def _text(value: object) -> str:
    """Any value as text that encodes as UTF-8 (lone surrogates escaped)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def row_key(table: str, row: Row) -> str:
    """Returns the identity of ``row`` (its ``ORDER BY`` values joined by ``|``)."""
    values = dict(zip(TABLE_COLUMNS[table], row, strict=False))
    return "|".join(_text(values.get(name, "")) for name in TABLE_KEYS[table])


def row_ref(table: str, row: Row) -> str:
    """A short, non-identifying reference to ``row`` for logs: the first 16 hex digits of
    the SHA-256 of its key (keys hold study UIDs, which logs never show; DESIGN §8).

    The row's dead letter names the same reference in its message, so a logged refusal
    is found in ``rejected_events`` with ``message LIKE '%ref <ref>%'``.
    """
    return hashlib.sha256(row_key(table, row).encode("utf-8")).hexdigest()[:16]


def _json_value(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return str(value)


def row_json(table: str, row: Row) -> bytes:
    """Returns ``row`` as a JSON object of its columns (bytes as ``{"base64": ...}``)."""
    document = dict(zip(TABLE_COLUMNS[table], row, strict=False))
    return json.dumps(
        document, default=_json_value, ensure_ascii=True, separators=(",", ":")
    ).encode("ascii")


def refused_letter(
    table: str, row: Row, error: str, received_at_ms: int, *, isolated: bool = True
) -> DeadLetter:
    """Returns the ``SINK_REJECTED`` dead letter of a row ``table`` refused.

    Args:
        table: the audit table that refused it.
        row: the row (``TABLE_COLUMNS[table]`` order); becomes the letter's value as JSON.
        error: the refusal's text (the server's or the encoder's error).
        received_at_ms: wall clock, epoch ms.
        isolated: False for a row not isolated before the split's inserts ran out.
    """
    values: dict[str, Any] = dict(zip(TABLE_COLUMNS[table], row, strict=False))
    what = "refused the row" if isolated else "refused a batch holding the row (not isolated)"
    source: dict[str, Any] = {}
    if table == "event_log":  # the only row that knows which input message it came from
        topic = values.get("source_topic")
        partition, offset = values.get("source_partition"), values.get("source_offset")
        if isinstance(topic, str) and topic:
            source = {"source_topic": _text(topic)}
            if isinstance(partition, int) and 0 <= partition < 2**31:
                source["source_partition"] = partition
            if isinstance(offset, int) and 0 <= offset < 2**63:
                source["source_offset"] = offset
    event_id, study_uid = values.get("event_id"), values.get("study_uid")
    return DeadLetter(
        reason=DeadLetterReason.SINK_REJECTED,
        message=f"{table} {what} (ref {row_ref(table, row)}): {_text(error)}"[:_MAX_MESSAGE_CHARS],
        key=row_key(table, row).encode("utf-8"),
        value=row_json(table, row),
        headers=(Header(key="table", value=table.encode("ascii")),),
        event_id=_text(event_id) if isinstance(event_id, str) else None,
        study_uid=_text(study_uid) if isinstance(study_uid, str) else None,
        received_at_ms=received_at_ms,
        **source,
    )


def _escaped(name: str, value: object) -> object:
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        return value if isinstance(value, int) and low <= value <= high else -1
    if value is None:
        return None if name in _NULLABLE_REJECTED else ""
    if isinstance(value, bytes | bytearray):
        return bytes(value[:_MAX_ESCAPED_BYTES])
    if isinstance(value, list | tuple):
        return tuple(_escaped("", item) if item is not None else None for item in value)
    return str(value).encode("ascii", "backslashreplace").decode("ascii")[:_MAX_ESCAPED_CHARS]


def escape_rejected_row(row: Row) -> Row:
    """Returns a ``rejected_events`` row every column type takes: text ASCII-escaped and
    truncated, bytes truncated, integers out of range -1, NULL only where allowed."""
    return tuple(_escaped(name, value) for name, value in zip(REJECTED_COLUMNS, row, strict=True))


# -- one table's write ---------------------------------------------------------------------


@dataclass(slots=True)
class TableWrite:
    """The outcome of :func:`write_table`.

    Attributes:
        table: the table written.
        rows: rows handed over.
        written: rows written (for ``rejected_events``, escaped rows included).
        inserts: inserts made (1 unless the batch was refused).
        error: the refusal of the whole batch; None when it passed.
        refused: rows refused (isolated or undecided when the split ran out of inserts).
        letters: one ``SINK_REJECTED`` dead letter per refused row (none for
            ``rejected_events``), still to be written there.
        unwritable: ``row_ref`` of ``rejected_events`` rows refused even escaped (logged).
    """

    table: str
    rows: int
    written: int
    inserts: int = 1
    error: str | None = None
    refused: int = 0
    letters: list[DeadLetter] = field(default_factory=list)
    unwritable: list[str] = field(default_factory=list)


def write_table(
    table: str,
    rows: Sequence[Row],
    insert: Insert,
    *,
    now_ms: int,
    max_inserts: int = DEFAULT_MAX_INSERTS,
) -> TableWrite:
    """Inserts ``rows``; if refused, splits the batch and dead-letters the offending rows.

    Called by a sink for each table it flushes. Logs one WARNING line per refused batch
    (table, rows, refused rows, inserts, error, the refused rows' ``row_ref``) and one ERROR
    line per ``rejected_events`` row that could not be written at all.

    Args:
        table: the table of ``rows``.
        rows: the rows to write.
        insert: inserts rows of ``table``.
        now_ms: wall clock, epoch ms, for the dead letters.
        max_inserts: inserts one split may make.

    Raises:
        BackendUnavailableError: the database cannot be reached (retry the whole batch).
        QueryError: the statement failed for another reason than its values.
    """
    try:
        insert(rows)
    except DataRefusedError as exc:
        error = str(exc)
    else:
        return TableWrite(table, len(rows), len(rows))
    split = split_refused(rows, insert, error, max_inserts=max_inserts)
    refused = split.refused + split.undecided
    outcome = TableWrite(table, len(rows), split.written, split.inserts, error, len(refused))
    if table == REJECTED_TABLE:
        _write_escaped(split, insert, outcome, max_inserts)
    else:
        outcome.letters = [refused_letter(table, r, e, now_ms) for r, e in split.refused]
        outcome.letters += [
            refused_letter(table, r, e, now_ms, isolated=False) for r, e in split.undecided
        ]
    keys = [row_ref(table, row) for row, _ in refused]
    log.warning(
        "%s refused %d of %d rows (%d isolated, %d undecided) in %d inserts; %s; "
        "first error: %s; refs: %s",
        table,
        len(keys),
        len(rows),
        len(split.refused),
        len(split.undecided),
        outcome.inserts,
        "escaped and written again" if table == REJECTED_TABLE else "dead-lettered",
        error[:300],
        ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else ""),
    )
    return outcome


def _write_escaped(split: Split, insert: Insert, outcome: TableWrite, max_inserts: int) -> None:
    """Dead letters ``rejected_events`` refused: escaped, written again; else logged."""
    refused = [row for row, _ in split.refused + split.undecided]
    escaped = [escape_rejected_row(row) for row in refused]
    try:
        insert(escaped)
    except DataRefusedError as exc:
        again = split_refused(escaped, insert, str(exc), max_inserts=max_inserts)
        outcome.inserts += again.inserts
        outcome.written += again.written
        for row, error in again.refused + again.undecided:
            ref = row_ref(REJECTED_TABLE, row)
            outcome.unwritable.append(ref)
            log.error(
                "rejected_events refused a dead letter even escaped; it is not stored (ref %s): %s",
                ref,
                error[:300],
            )
    else:
        outcome.inserts += 1
        outcome.written += len(escaped)
