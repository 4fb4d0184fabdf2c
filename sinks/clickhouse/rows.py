"""Pure row mapping: output records <-> column tuples of the audit tables (DESIGN §6).

No ClickHouse or chDB client is imported here (STYLE rule 1): the sinks turn records
into tuples with these functions and hand the tuples to their client. The functions
sit on the hot path, so the column order of every table is fixed once at import and
most mappers are a single ``operator.attrgetter`` call (one C-level call per record).

Values keep their Python types: enum members (``StrEnum``, i.e. ``str``), ``bool``
for ``UInt8`` flags, ``tuple`` for ``Array``, ``None`` for ``NULL``, ``bytes`` for the
raw key and value of a dead letter. Both clickhouse-driver and the Arrow encoder of the
chDB sink accept them as they are.

Lineage rows are lossless: :func:`lineage_from_row` rebuilds the exact
:class:`LineageRecord` (so ``imgov audit verify`` recomputes the same hash chain).

Accepted input events (``event_log``) are stored as JSON *without direct identifiers*
(DESIGN §8). The sink decides how: by default :func:`redact_identifiers` removes them;
pass ``Pseudonymiser.pseudonymise_event`` to keep their HMAC references instead (each
identifier field of the payload then holds its reference), or an identity function when
the events were pseudonymised upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeAlias

from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate

__all__ = [
    "BREACH_COLUMNS",
    "EVENT_COLUMNS",
    "KPI_COLUMNS",
    "LINEAGE_COLUMNS",
    "REJECTED_COLUMNS",
    "REVIEW_COLUMNS",
    "TABLE_COLUMNS",
    "EventSource",
    "Row",
    "breach_row",
    "event_payload",
    "event_row",
    "kpi_row",
    "lineage_from_row",
    "lineage_row",
    "redact_identifiers",
    "rejected_row",
    "review_row",
]

Row: TypeAlias = tuple[Any, ...]
"""Column values in the order of the table's ``*_COLUMNS``."""

LINEAGE_COLUMNS: tuple[str, ...] = tuple(LineageRecord.model_fields)
"""``lineage_history`` columns written: every LineageRecord field, under its own name."""

KPI_COLUMNS: tuple[str, ...] = tuple(KpiValue.model_fields)
"""``kpi_values`` columns written (``version`` is MATERIALIZED by the server)."""

BREACH_COLUMNS: tuple[str, ...] = tuple(Breach.model_fields)

REVIEW_COLUMNS: tuple[str, ...] = tuple(ReviewCandidate.model_fields)

EVENT_COLUMNS: tuple[str, ...] = (
    "site_id",
    "study_uid",
    "event_id",
    "event_type",
    "occurred_at_ms",
    "algorithm_name",
    "algorithm_version",
    "finding_code",
    "status",
    "payload",
    "source_topic",
    "source_partition",
    "source_offset",
    "schema_id",
    "ingested_at_ms",
)

REJECTED_COLUMNS: tuple[str, ...] = (
    "source_topic",
    "source_partition",
    "source_offset",
    "reason",
    "value_sha256",
    "message",
    "key",
    "value",
    "header_keys",
    "header_values",
    "event_id",
    "study_uid",
    "received_at_ms",
)

TABLE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "event_log": EVENT_COLUMNS,
    "lineage_history": LINEAGE_COLUMNS,
    "kpi_values": KPI_COLUMNS,
    "kpi_breaches": BREACH_COLUMNS,
    "rejected_events": REJECTED_COLUMNS,
    "review_candidates": REVIEW_COLUMNS,
}
"""The columns each sink writes, per table (the others have server-side defaults)."""

UNKNOWN_PARTITION = -1
UNKNOWN_OFFSET = -1

lineage_row: Callable[[LineageRecord], Row] = attrgetter(*LINEAGE_COLUMNS)
"""Returns the ``lineage_history`` row of a lineage revision."""

kpi_row: Callable[[KpiValue], Row] = attrgetter(*KPI_COLUMNS)
"""Returns the ``kpi_values`` row of a KPI value."""

breach_row: Callable[[Breach], Row] = attrgetter(*BREACH_COLUMNS)
"""Returns the ``kpi_breaches`` row of a breach."""

review_row: Callable[[ReviewCandidate], Row] = attrgetter(*REVIEW_COLUMNS)
"""Returns the ``review_candidates`` row of a review candidate."""


@dataclass(frozen=True, slots=True)
class EventSource:
    """Where an accepted input event was read from.

    Attributes:
        topic: the Kafka topic, or the input file's path for offline replay.
        partition: the Kafka partition (0 for a file).
        offset: the Kafka offset, or the line number in the file.
        schema_id: the Avro writer schema id, None for JSON input.
    """

    topic: str
    partition: int
    offset: int
    schema_id: int | None = None


_IDENTIFIER_FIELDS: dict[type, tuple[str, ...]] = {
    InferenceEvent: ("patient_id", "accession_number"),
    ReportEvent: ("patient_id", "accession_number", "interpreter_id"),
    AlertEvent: ("recipient_id",),
}


def redact_identifiers(event: Event) -> Event:
    """Returns a copy of ``event`` with every direct identifier set to None (DESIGN §8)."""
    fields = _IDENTIFIER_FIELDS[type(event)]
    if all(getattr(event, name) is None for name in fields):
        return event
    return event.model_copy(update=dict.fromkeys(fields))


def event_payload(event: Event) -> str:
    """Returns the JSON stored in ``event_log.payload`` for an already cleaned event."""
    return event.model_dump_json()


def event_row(event: Event, payload: str, source: EventSource | None, ingested_at_ms: int) -> Row:
    """Returns the ``event_log`` row of an accepted input event.

    Args:
        event: the event as it may be stored: identifiers already removed or
            pseudonymised (its ``study_uid`` is the stored one).
        payload: the JSON of that event (:func:`event_payload`).
        source: where it was read; None when unknown (partition and offset -1).
        ingested_at_ms: when the pipeline accepted it (wall clock, epoch ms).
    """
    if isinstance(event, AlertEvent):
        status: str = event.state
    else:
        status = event.status
    if isinstance(event, ReportEvent):
        algorithm: tuple[str | None, str | None, str | None] = (None, None, None)
    else:
        algorithm = (event.algorithm_name, event.algorithm_version, event.finding_code)
    if source is None:
        where: tuple[str, int, int, int | None] = ("", UNKNOWN_PARTITION, UNKNOWN_OFFSET, None)
    else:
        where = (source.topic, source.partition, source.offset, source.schema_id)
    return (
        event.site_id,
        event.study_uid,
        event.event_id,
        event.event_type.value,
        event.occurred_at_ms,
        *algorithm,
        status,
        payload,
        *where,
        ingested_at_ms,
    )


def rejected_row(letter: DeadLetter, received_at_ms: int) -> Row:
    """Returns the ``rejected_events`` row of a dead letter.

    Args:
        letter: the dead letter, with the original bytes.
        received_at_ms: used when the letter does not say when it was received.
    """
    return (
        letter.source_topic or "",
        UNKNOWN_PARTITION if letter.source_partition is None else letter.source_partition,
        UNKNOWN_OFFSET if letter.source_offset is None else letter.source_offset,
        letter.reason,
        hashlib.sha256(letter.value).hexdigest(),
        letter.message,
        letter.key,
        letter.value,
        tuple(header.key for header in letter.headers),
        tuple(header.value for header in letter.headers),
        letter.event_id,
        letter.study_uid,
        received_at_ms if letter.received_at_ms is None else letter.received_at_ms,
    )


def lineage_from_row(row: Mapping[str, Any] | Sequence[Any]) -> LineageRecord:
    """Rebuilds a lineage revision from a ``lineage_history`` row.

    Args:
        row: a mapping of column name to value (extra columns such as ``updated_at``
            are ignored), or a sequence in ``LINEAGE_COLUMNS`` order.

    Raises:
        pydantic.ValidationError: the row does not describe a valid record.
    """
    if isinstance(row, Mapping):
        values = {name: row[name] for name in LINEAGE_COLUMNS}
    else:
        values = dict(zip(LINEAGE_COLUMNS, row, strict=True))
    return LineageRecord.model_validate(values)
