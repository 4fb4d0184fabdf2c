"""``ClickHouseSink``: the audit tables on a ClickHouse server, via clickhouse-driver.

Records are mapped to rows on ``add`` and buffered per table. They are written

* when the buffer reaches ``max_batch_rows`` (inside ``add``),
* when the caller's timer calls ``flush_if_due(now_s)`` and the oldest buffered row is
  ``max_batch_age_s`` old (``now_s`` and the sink's ``clock`` are the same clock), and
* on ``flush()``, which the runtime calls before it commits input offsets: it returns
  only when every row added so far has been acknowledged by the server.

Rows travel as insert data (``INSERT INTO t (cols) VALUES`` + rows), never as SQL text:
inline VALUES hang clickhouse-driver against 18.16. Writes are idempotent (every table
is a ReplacingMergeTree keyed by the record's identity and revision), so writing a
batch twice, after a timeout that hid a success, is harmless.

While the server is unreachable the sink backs off exponentially with jitter (from
``retry_initial_s`` doubling up to ``retry_max_s``) and keeps every row. ``flush`` waits
up to ``flush_timeout_s`` for the server and then raises ``SinkBackpressureError``;
``add`` raises it, without taking the record, once ``max_buffer_rows`` are waiting.

A batch refused for some of its values (``DataRefusedError``) is split
(:mod:`sinks.refusals`): the other rows are written, each offending row becomes a
``SINK_REJECTED`` dead letter written to ``rejected_events`` in the same flush (that
table is written last), and :meth:`ClickHouseSink.take_refusals` hands the outcomes to
the caller, which produces the letters to the dead-letter topic. Any other rejected
statement (an unknown column, a missing grant) raises ``SinkError``; its rows stay
buffered.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from schemas.events import Event
from sinks.base import Output, SinkBackpressureError, SinkError
from sinks.clickhouse.buffer import EventCleaner, RowBuffer
from sinks.clickhouse.rows import TABLE_COLUMNS, EventSource, Row
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import BackendUnavailableError, ClickHouseBackend, QueryBackend, QueryError
from sinks.refusals import DEFAULT_MAX_INSERTS, REJECTED_TABLE, TableWrite, write_table

__all__ = ["ClickHouseSink"]


_WRITE_ORDER = tuple(sorted(TABLE_COLUMNS, key=lambda table: table == REJECTED_TABLE))
"""``rejected_events`` last: the dead letters of rows refused by the other tables join
it in the same write."""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ClickHouseSink:
    """Writes pipeline outputs to the audit tables of a ClickHouse server.

    Args:
        backend: the server connection; its database holds the migrated tables.
        max_batch_rows: write as soon as this many rows are buffered.
        max_batch_age_s: ``flush_if_due`` writes once the oldest row is this old.
        max_buffer_rows: ``add`` refuses records beyond this many buffered rows.
        retry_initial_s: first back-off after a failed write.
        retry_max_s: longest single back-off.
        flush_timeout_s: how long ``flush`` keeps retrying before giving up.
        max_split_inserts: inserts allowed to split one refused batch of one table.
        clean_event: how input events lose their direct identifiers (default: removed).
        clock: monotonic seconds, for batch age and back-off.
        wall_clock_ms: epoch milliseconds, for ``ingested_at_ms`` / ``received_at_ms``.
        sleep: waits during ``flush`` back-off.
        jitter: returns a float in [0, 1); the back-off is scaled by 0.5 + jitter / 2.
    """

    def __init__(
        self,
        backend: QueryBackend,
        *,
        max_batch_rows: int = 20_000,
        max_batch_age_s: float = 1.0,
        max_buffer_rows: int = 500_000,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        flush_timeout_s: float = 60.0,
        max_split_inserts: int = DEFAULT_MAX_INSERTS,
        clean_event: EventCleaner | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < max_batch_rows <= max_buffer_rows:
            raise ValueError("need 0 < max_batch_rows <= max_buffer_rows")
        self._backend = backend
        self._buffer = RowBuffer(clean_event)
        self.max_batch_rows = max_batch_rows
        self.max_batch_age_s = max_batch_age_s
        self.max_buffer_rows = max_buffer_rows
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.flush_timeout_s = flush_timeout_s
        self.max_split_inserts = max_split_inserts
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._sleep = sleep
        self._jitter = jitter
        self._oldest_at: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.rows_written = 0
        self.rows_written_by_table: dict[str, int] = {}
        """Rows written so far, per table (the metrics' source)."""
        self._refusals: list[TableWrite] = []

    @classmethod
    def from_settings(cls, settings: ClickHouseSettings, **options: Any) -> ClickHouseSink:
        """Returns a sink on the server and database of ``settings`` (``IMGOV_CLICKHOUSE_*``).

        Raises:
            QueryError: the database does not exist (run ``imgov db migrate``).
        """
        return cls(ClickHouseBackend.connect(settings), **options)

    @property
    def backend(self) -> QueryBackend:
        return self._backend

    @property
    def pending_rows(self) -> int:
        """Rows added and not yet written."""
        return len(self._buffer)

    def add(self, record: Output) -> None:
        """Buffers one record; writes a batch when ``max_batch_rows`` are buffered.

        Raises:
            SinkBackpressureError: ``max_buffer_rows`` are waiting for an unreachable
                server; the record was NOT taken: wait, then add it again.
            SinkError: a batch written here was rejected (the record was taken).
        """
        self._admit()
        self._buffer.add(record, self._wall_clock_ms())
        self._after_add()

    def add_event(self, event: Event, source: EventSource | None) -> None:
        """Buffers an accepted input event for ``event_log`` with where it was read.

        Raises:
            SinkBackpressureError: as :meth:`add`.
            SinkError: as :meth:`add`.
        """
        self._admit()
        self._buffer.add_event(event, source, self._wall_clock_ms())
        self._after_add()

    def _admit(self) -> None:
        if len(self._buffer) < self.max_buffer_rows:
            return
        now = self._clock()
        if now >= self._retry_at:
            self._try_write(now)
        if len(self._buffer) >= self.max_buffer_rows:
            raise SinkBackpressureError(
                f"{len(self._buffer)} rows wait for {self._where()}, which is unavailable",
                retry_after_s=max(self._retry_at - self._clock(), self.retry_initial_s),
            )

    def _after_add(self) -> None:
        if self._oldest_at is None:
            self._oldest_at = self._clock()
        if len(self._buffer) >= self.max_batch_rows:
            now = self._clock()
            if now >= self._retry_at:
                self._try_write(now)

    def flush_if_due(self, now_s: float) -> bool:
        """Writes the buffer if its oldest row is ``max_batch_age_s`` old (or it is full).

        Called by the runtime's timer; never sleeps, never raises for an unreachable
        server (the rows stay buffered and the back-off applies).

        Args:
            now_s: the current time on the sink's ``clock``.

        Returns:
            Whether everything buffered was written.

        Raises:
            SinkError: the server rejected a batch.
        """
        if self._oldest_at is None or now_s < self._retry_at:
            return False
        if (
            now_s - self._oldest_at < self.max_batch_age_s
            and len(self._buffer) < self.max_batch_rows
        ):
            return False
        return self._try_write(now_s)

    def flush(self) -> None:
        """Writes every buffered row; returns once the server acknowledged all of them.

        Raises:
            SinkBackpressureError: the server stayed unreachable for ``flush_timeout_s``;
                nothing was lost: wait ``retry_after_s``, then flush again.
            SinkError: the server rejected a batch; its rows stay buffered.
        """
        deadline = self._clock() + self.flush_timeout_s
        while len(self._buffer):
            now = self._clock()
            if now < self._retry_at:
                wait = self._retry_at - now
                if now + wait > deadline:
                    raise SinkBackpressureError(
                        f"{len(self._buffer)} rows not written: {self._where()} unavailable "
                        f"for {self.flush_timeout_s:g} s",
                        retry_after_s=wait,
                    )
                self._sleep(wait)
                continue
            self._try_write(now)

    def take_refusals(self) -> list[TableWrite]:
        """Returns (and forgets) the refused batches split since the last call.

        Their dead letters (``letters``) are in ``rejected_events`` once ``flush``
        has returned; the live worker produces them to the dead-letter topic.
        """
        taken, self._refusals = self._refusals, []
        return taken

    def close(self) -> None:
        """Flushes, then disconnects.

        Raises:
            SinkBackpressureError: as :meth:`flush`; the connection stays open.
            SinkError: as :meth:`flush`; the connection stays open.
        """
        self.flush()
        self._backend.close()

    def _try_write(self, now: float) -> bool:
        """One attempt to write every table; False (and a back-off) if unreachable."""
        try:
            for table in _WRITE_ORDER:
                if self._buffer.rows[table]:
                    self._write(table)
        except BackendUnavailableError:
            self._failures += 1
            delay = min(self.retry_max_s, self.retry_initial_s * 2 ** (self._failures - 1))
            self._retry_at = now + delay * (0.5 + self._jitter() / 2)
            return False
        except QueryError as exc:
            raise SinkError(f"{self._where()} rejected a batch: {exc}") from exc
        self._failures = 0
        self._retry_at = 0.0
        self._oldest_at = None
        return True

    def _write(self, table: str) -> None:
        """Writes the buffered rows of ``table``, splitting a refused batch."""
        columns = TABLE_COLUMNS[table]

        def insert(rows: Sequence[Row]) -> None:
            self._backend.insert(table, columns, rows)

        now_ms = self._wall_clock_ms()
        outcome = write_table(
            table,
            self._buffer.rows[table],
            insert,
            now_ms=now_ms,
            max_inserts=self.max_split_inserts,
        )
        self.rows_written += outcome.written
        by_table = self.rows_written_by_table
        by_table[table] = by_table.get(table, 0) + outcome.written
        self._buffer.clear(table)
        if outcome.error is not None:
            for letter in outcome.letters:
                self._buffer.add(letter, now_ms)
            self._refusals.append(outcome)

    def _where(self) -> str:
        return f"ClickHouse database {self._backend.database}"
