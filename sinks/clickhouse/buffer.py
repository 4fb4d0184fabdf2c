"""The row buffer both audit-table sinks fill: records in, rows per table out.

:class:`RowBuffer` routes each output record to its table and maps it to a row
(:mod:`sinks.clickhouse.rows`) at ``add`` time, so a record is never kept alive longer
than its tuple and the flush only moves lists. It performs no I/O and reads no clock:
the sink passes the wall-clock time used for ``ingested_at_ms`` / ``received_at_ms``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from sinks.base import Output
from sinks.clickhouse.rows import (
    TABLE_COLUMNS,
    EventSource,
    Row,
    breach_row,
    event_payload,
    event_row,
    kpi_row,
    lineage_row,
    redact_identifiers,
    rejected_row,
    review_row,
)

__all__ = ["EventCleaner", "RowBuffer"]

EventCleaner = Callable[[Event], Event]
"""Turns an accepted event into what ``event_log`` may store (no direct identifiers)."""


class RowBuffer:
    """Rows waiting to be written, one list per table.

    Args:
        clean_event: applied to every input event before it is stored; the default
            removes direct identifiers (see :mod:`sinks.clickhouse.rows`).
    """

    def __init__(self, clean_event: EventCleaner | None = None) -> None:
        self._clean_event = clean_event or redact_identifiers
        self.rows: dict[str, list[Row]] = {table: [] for table in TABLE_COLUMNS}
        self.count = 0
        self._routes: dict[type, tuple[str, Callable[[Any], Row]]] = {
            LineageRecord: ("lineage_history", lineage_row),
            KpiValue: ("kpi_values", kpi_row),
            Breach: ("kpi_breaches", breach_row),
            ReviewCandidate: ("review_candidates", review_row),
        }

    def __len__(self) -> int:
        return self.count

    def add(self, record: Output, now_ms: int) -> None:
        """Maps ``record`` to a row of its table and keeps it.

        Args:
            record: any sink output; input events get an unknown source.
            now_ms: wall clock (epoch ms) for the ingestion / reception time.
        """
        route = self._routes.get(type(record))
        if route is not None:
            table, to_row = route
            self.rows[table].append(to_row(record))
        elif isinstance(record, InferenceEvent | AlertEvent | ReportEvent):
            self.add_event(record, None, now_ms)
            return
        elif isinstance(record, DeadLetter):
            self.rows["rejected_events"].append(rejected_row(record, now_ms))
        else:
            raise TypeError(f"no audit table for {type(record).__name__}")
        self.count += 1

    def add_rows(self, table: str, rows: list[Row]) -> None:
        """Keeps rows of ``table`` mapped elsewhere (e.g. by another process)."""
        self.rows[table].extend(rows)
        self.count += len(rows)

    def add_event(self, event: Event, source: EventSource | None, now_ms: int) -> None:
        """Keeps the ``event_log`` row of an accepted input event read from ``source``."""
        stored = self._clean_event(event)
        self.rows["event_log"].append(event_row(stored, event_payload(stored), source, now_ms))
        self.count += 1

    def pending(self) -> Iterator[tuple[str, list[Row]]]:
        """Yields ``(table, rows)`` for every table with rows, in a fixed order."""
        for table, rows in self.rows.items():
            if rows:
                yield table, rows

    def take(self) -> dict[str, list[Row]]:
        """Removes and returns every buffered row, by table (tables without rows omitted)."""
        taken = {table: rows for table, rows in self.rows.items() if rows}
        for table in taken:
            self.rows[table] = []
        self.count = 0
        return taken

    def clear(self, table: str) -> None:
        """Forgets the rows of one table (they were written)."""
        self.count -= len(self.rows[table])
        self.rows[table] = []

    def restore(self, taken: dict[str, list[Row]]) -> None:
        """Puts rows returned by :meth:`take` back in front of any added since."""
        for table, rows in taken.items():
            self.rows[table] = rows + self.rows[table]
            self.count += len(rows)
