"""``ChdbSink``: the audit tables in an embedded chDB data directory (zero servers).

The default sink of ``imgov replay`` and the demo. Opening it applies the migrations
(the same files as on the server), so a fresh directory is ready at once.

Speed (DESIGN §10 allows the chDB sink 20% of replay throughput): records become rows
on ``add`` (one ``attrgetter`` call for most kinds), rows are buffered per table and
written in large batches (``batch_rows``, default 50 000) as one Arrow IPC stream per
table through chDB's streaming insert (``send_insert(..., "ArrowStream")``). The row
tuples become one Arrow struct array in C++ (cheaper than transposing them to columns
in Python), and chDB reads Arrow without a text format in between: JSONCompactEachRow
cost about twice as much per row (json.dumps per row plus parsing), and the
``Python()`` table function cannot take enum members. De-duplication on insert
(``optimize_on_insert``) is switched off: the views de-duplicate, and it cost ~40%.

``background=True`` runs the insert (which releases the GIL inside chDB) on a thread,
one batch in flight, while the caller encodes the next. On the shared 2-core machines
it showed no consistent gain against a synthetic producer (0.8x to 1.3x of inline
across runs of bench_sinks: chDB's own insert and merge threads already use the second
core), so it is off by default; behind the replay of the demo's stream it took 5.2-5.3 s
against 5.8-5.9 s inline in three paired runs, so ``imgov replay --chdb`` and the demo
turn it on.

chDB quirks (4.4 / ClickHouse 26.x):

* one process may open ONE data directory at a time; a second directory, or the
  module-level ``chdb.query`` (``:memory:``), fails until every connection to the first
  is closed: close the sink (or use it as a context manager);
* one data directory may be open in ONE process at a time (a lock file);
* several connections to the same directory in one process are fine: ``backend``
  shares this sink's connection for queries.

A batch refused for some of its values (a value its Arrow column cannot take, or one
chDB refuses) is split as the server sink splits it (:mod:`sinks.refusals`): the other
rows are written and each refused row becomes a ``SINK_REJECTED`` dead letter in
``rejected_events``; ``rows_refused`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from types import TracebackType
from typing import Any

import pyarrow as pa

from schemas.events import Event
from sinks.base import Output, SinkError
from sinks.clickhouse.buffer import EventCleaner, RowBuffer
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.rows import TABLE_COLUMNS, EventSource, Row, kpi_row, rejected_row
from sinks.query import ChdbBackend, DataRefusedError, QueryError, QueryResult
from sinks.refusals import REJECTED_TABLE, write_table

__all__ = ["ChdbSink", "arrow_type"]

_SCALAR_TYPES: dict[str, pa.DataType] = {
    "String": pa.binary(),  # str is encoded as UTF-8, bytes pass unchanged
    "Int64": pa.int64(),
    "Int32": pa.int32(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "UInt8": pa.bool_(),  # every UInt8 column of the audit tables is a flag
    "Float64": pa.float64(),
}


def arrow_type(clickhouse_type: str) -> pa.DataType:
    """Returns the Arrow type a column of ``clickhouse_type`` is sent as.

    Raises:
        ValueError: a type the audit tables do not use.
    """
    if clickhouse_type.startswith("Nullable(") and clickhouse_type.endswith(")"):
        return arrow_type(clickhouse_type[len("Nullable(") : -1])
    if clickhouse_type.startswith("Array(") and clickhouse_type.endswith(")"):
        return pa.list_(arrow_type(clickhouse_type[len("Array(") : -1]))
    try:
        return _SCALAR_TYPES[clickhouse_type]
    except KeyError:
        raise ValueError(f"no Arrow mapping for ClickHouse type {clickhouse_type}") from None


class _LockedChdbBackend(ChdbBackend):
    """A ChdbBackend safe to share between the sink's insert thread and callers."""

    def __init__(self, path: Path | str, database: str) -> None:
        self._lock = Lock()
        super().__init__(path, database)

    def execute(self, sql: str, params: Any = None) -> QueryResult:
        with self._lock:
            return super().execute(sql, params)

    def insert_data(self, table: str, columns: Sequence[str], data: bytes, fmt: str) -> None:
        with self._lock:
            super().insert_data(table, columns, data, fmt)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ChdbSink:
    """Writes pipeline outputs to the audit tables of a chDB data directory.

    Args:
        path: the data directory (created, and migrated, when needed).
        database: the database inside it.
        batch_rows: write once this many rows are buffered.
        background: insert on a background thread (one batch in flight); see above.
        clean_event: how input events lose their direct identifiers (default: removed).
        wall_clock_ms: epoch milliseconds for ``ingested_at_ms`` / ``received_at_ms``.

    Raises:
        BackendUnavailableError: the directory is open in another process, or this
            process has another chDB directory open.
        QueryError: the migrations failed.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        database: str = "imgov",
        batch_rows: int = 50_000,
        background: bool = False,
        clean_event: EventCleaner | None = None,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.path = Path(path)
        self.batch_rows = batch_rows
        self._backend = _LockedChdbBackend(self.path, database)
        try:
            migrate(self._backend)
            # The views read with FINAL/argMax, so de-duplicating each insert block
            # (on by default for Replacing tables in 26.x) only costs time.
            self._backend.execute("SET optimize_on_insert = 0")
            self._schemas = {table: self._arrow_types(table) for table in TABLE_COLUMNS}
        except BaseException:
            self._backend.close()
            raise
        self._buffer = RowBuffer(clean_event)
        self._wall_clock_ms = wall_clock_ms
        self._executor = ThreadPoolExecutor(1, "chdb-sink") if background else None
        self._inflight: tuple[dict[str, list[Row]], Future[None]] | None = None
        self._closed = False
        self.rows_written = 0
        self.rows_refused = 0
        """Rows refused and dead-lettered to ``rejected_events`` (``sinks.refusals``)."""

    def _arrow_types(self, table: str) -> tuple[pa.Schema, pa.StructType]:
        # From the migrated table itself, so the DDL stays the one source of types.
        _, rows = self._backend.execute(
            "SELECT name, type FROM system.columns "
            "WHERE database = currentDatabase() AND table = %(table)s",
            {"table": table},
        )
        types: dict[str, str] = {str(name): str(kind) for name, kind in rows}
        schema = pa.schema([(name, arrow_type(types[name])) for name in TABLE_COLUMNS[table]])
        return schema, pa.struct(list(schema))

    @property
    def backend(self) -> ChdbBackend:
        """A query backend on the same connection (for ``imgov query``, audit verify)."""
        return self._backend

    @property
    def pending_rows(self) -> int:
        """Rows added and not yet handed to chDB."""
        return len(self._buffer)

    def __enter__(self) -> ChdbSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._shutdown()

    def add(self, record: Output) -> None:
        """Buffers one record; hands a batch to chDB every ``batch_rows`` rows.

        Raises:
            SinkError: the previous batch was rejected (its rows are buffered again).
        """
        buffer = self._buffer
        buffer.add(record, self._wall_clock_ms())
        if buffer.count >= self.batch_rows:
            self._submit()

    kpi_encoder = kpi_row
    """How ``add_encoded_kpis`` wants KPI values encoded (by a process that has them)."""

    def add_encoded_kpis(self, rows: list[Row]) -> None:
        """Buffers ``kpi_values`` rows already mapped with ``kpi_encoder``."""
        self._buffer.add_rows("kpi_values", rows)
        if self._buffer.count >= self.batch_rows:
            self._submit()

    def add_event(self, event: Event, source: EventSource | None) -> None:
        """Buffers an accepted input event for ``event_log`` with where it was read."""
        self._buffer.add_event(event, source, self._wall_clock_ms())
        if self._buffer.count >= self.batch_rows:
            self._submit()

    def flush(self) -> None:
        """Writes every buffered row; returns once chDB has committed them.

        Raises:
            SinkError: chDB rejected a batch; its rows stay buffered.
        """
        if len(self._buffer):
            self._submit()
        self._wait()

    def close(self) -> None:
        """Flushes, then closes the chDB connection (freeing the directory).

        The connection is closed even when the flush fails; the rows it could not
        write are then dropped (their input offsets were never committed).

        Raises:
            SinkError: the final flush failed.
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._backend.close()

    def _submit(self) -> None:
        # Encoding holds the GIL, so it runs here; with ``background`` only the insert,
        # which releases the GIL inside chDB, goes to the thread.
        self._wait()
        batch = self._buffer.take()
        try:
            payloads = self._encode(batch)
            if self._executor is None:
                self._insert(payloads)
                return
        except BaseException:
            self._buffer.restore(batch)
            raise
        self._inflight = (batch, self._executor.submit(self._insert, payloads))

    def _wait(self) -> None:
        if self._inflight is None:
            return
        batch, future = self._inflight
        self._inflight = None
        try:
            future.result()
        except BaseException:
            self._buffer.restore(batch)
            raise

    def _encode(self, batch: dict[str, list[Row]]) -> list[_Payload]:
        payloads = []
        for table, rows in batch.items():
            try:
                data: bytes | None = self._encoded(table, rows)
            except DataRefusedError:
                data = None  # a value Arrow cannot take: ``_write`` splits the batch
            payloads.append((table, rows, data))
        return payloads

    def _encoded(self, table: str, rows: Sequence[Row]) -> bytes:
        row_type = self._schemas[table][1]
        try:
            # Rows are tuples: one struct conversion beats transposing to columns.
            return _ipc_stream(pa.RecordBatch.from_struct_array(pa.array(rows, type=row_type)))
        except (pa.ArrowException, ValueError, TypeError, ArithmeticError) as exc:
            raise DataRefusedError(
                f"cannot encode {len(rows)} rows for chDB table {table}: {exc}"
            ) from exc

    def _insert(self, payloads: list[_Payload]) -> None:
        letters: list[Row] = []
        try:
            for table, rows, data in payloads:
                letters += self._write(table, rows, data)
            if letters:
                self._write(REJECTED_TABLE, letters, None)
        except QueryError as exc:
            # The whole batch is restored and written again: rewriting the tables that
            # succeeded is idempotent (Replacing tables).
            count = sum(len(rows) for _, rows, _ in payloads)
            raise SinkError(f"chDB {self.path} rejected {count} rows: {exc}") from exc

    def _write(self, table: str, rows: list[Row], data: bytes | None) -> list[Row]:
        """Writes one table's rows, splitting a refused batch; returns the
        ``rejected_events`` rows of the dead letters of the rows refused."""
        columns = self._schemas[table][0].names

        def insert(chunk: Sequence[Row]) -> None:
            # The whole batch was encoded on the caller's thread (``data``); a split
            # encodes its halves here.
            encoded = data if chunk is rows and data is not None else self._encoded(table, chunk)
            self._backend.insert_data(table, columns, encoded, "ArrowStream")

        now_ms = self._wall_clock_ms()
        outcome = write_table(table, rows, insert, now_ms=now_ms)
        self.rows_written += outcome.written
        self.rows_refused += outcome.refused
        return [rejected_row(letter, now_ms) for letter in outcome.letters]


_Payload = tuple[str, list[Row], bytes | None]
"""A table, its rows and their Arrow IPC stream (None: Arrow refused a value)."""


def _ipc_stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())
