"""ClickHouseSink batching, back-off and back-pressure, against an in-memory backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from sinks.base import Sink, SinkBackpressureError, SinkError
from sinks.clickhouse.rows import LINEAGE_COLUMNS, TABLE_COLUMNS, EventSource
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import BackendUnavailableError, QueryError, QueryResult
from tests.unit.sinks import factory


class FakeBackend:
    """Keeps inserted rows; can be made unreachable or rejecting, per table."""

    database = "imgov_test"

    def __init__(self) -> None:
        self.inserts: list[tuple[str, tuple[str, ...], list[tuple[object, ...]]]] = []
        self.down = False
        self.reject_table: str | None = None
        self.down_table: str | None = None
        self.attempts = 0
        self.closed = False

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> QueryResult:
        return [], []

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.attempts += 1
        if self.down or table == self.down_table:
            raise BackendUnavailableError("Code: 210. Connection refused", code=210)
        if table == self.reject_table:
            raise QueryError("Code: 53. Type mismatch", code=53)
        self.inserts.append((table, tuple(columns), [tuple(row) for row in rows]))

    def close(self) -> None:
        self.closed = True

    def rows(self, table: str) -> list[tuple[object, ...]]:
        return [row for name, _, rows in self.inserts if name == table for row in rows]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_sink(backend: FakeBackend, clock: FakeClock, **options: object) -> ClickHouseSink:
    defaults: dict[str, object] = {
        "max_batch_rows": 10,
        "max_batch_age_s": 1.0,
        "max_buffer_rows": 30,
        "retry_initial_s": 0.1,
        "retry_max_s": 1.0,
        "flush_timeout_s": 5.0,
        "clock": clock,
        "sleep": clock.sleep,
        "jitter": lambda: 1.0,  # no randomness: each back-off is its nominal value
        "wall_clock_ms": lambda: 7,
    }
    defaults.update(options)
    return ClickHouseSink(backend, **defaults)  # type: ignore[arg-type]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_is_a_sink(backend: FakeBackend, clock: FakeClock) -> None:
    assert isinstance(make_sink(backend, clock), Sink)


def test_flush_writes_each_table_with_its_columns(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock, max_batch_rows=1000, max_buffer_rows=1000)
    records = list(factory.every_kind())
    for record in records:
        sink.add(record)  # type: ignore[arg-type]
    assert backend.inserts == []
    sink.flush()
    assert {table for table, _, _ in backend.inserts} == set(TABLE_COLUMNS)
    for table, columns, _ in backend.inserts:
        assert columns == TABLE_COLUMNS[table]
    assert sum(len(rows) for _, _, rows in backend.inserts) == len(records) == sink.rows_written
    assert sink.pending_rows == 0
    sink.flush()  # nothing left: no insert
    assert backend.attempts == len(TABLE_COLUMNS)


def test_add_writes_when_the_batch_is_full(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock)
    for record in factory.lineage_records(25):
        sink.add(record)
    assert len(backend.rows("lineage_history")) == 20
    assert sink.pending_rows == 5


def test_flush_if_due_writes_only_old_enough_batches(
    backend: FakeBackend, clock: FakeClock
) -> None:
    sink = make_sink(backend, clock)
    assert sink.flush_if_due(clock.now) is False  # empty
    sink.add(factory.lineage_records(1)[0])
    assert sink.flush_if_due(clock.now + 0.5) is False
    assert backend.inserts == []
    assert sink.flush_if_due(clock.now + 1.0) is True
    assert len(backend.rows("lineage_history")) == 1
    # The age restarts with the next row added.
    clock.now += 10
    sink.add(factory.lineage_records(2)[1])
    assert sink.flush_if_due(clock.now + 0.9) is False
    assert sink.flush_if_due(clock.now + 1.1) is True


def test_add_event_keeps_the_source(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock)
    sink.add_event(factory.input_events()[0], EventSource("imaging.ai.inference.v1", 1, 5, 3))
    sink.flush()
    (row,) = backend.rows("event_log")
    assert row[-5:] == ("imaging.ai.inference.v1", 1, 5, 3, 7)


def test_unreachable_server_backs_off_exponentially_then_raises_backpressure(
    backend: FakeBackend, clock: FakeClock
) -> None:
    sink = make_sink(backend, clock, flush_timeout_s=2.0)
    for record in factory.lineage_records(5):
        sink.add(record)
    backend.down = True
    start = clock.now
    with pytest.raises(SinkBackpressureError) as raised:
        sink.flush()
    # 0.1, 0.2, 0.4, 0.8 (waited: 1.5 s), then 1.0 (capped) would pass the 2 s deadline.
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert clock.now - start == pytest.approx(1.5)
    assert raised.value.retry_after_s == pytest.approx(1.0)
    assert sink.pending_rows == 5
    assert isinstance(raised.value, SinkError)

    backend.down = False
    clock.now += raised.value.retry_after_s
    sink.flush()
    assert len(backend.rows("lineage_history")) == 5  # nothing lost, nothing twice
    assert sink.pending_rows == 0


def test_jitter_scales_the_back_off(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock, jitter=lambda: 0.0, flush_timeout_s=0.3)
    sink.add(factory.lineage_records(1)[0])
    backend.down = True
    with pytest.raises(SinkBackpressureError):
        sink.flush()
    assert clock.slept == pytest.approx([0.05, 0.1])


def test_add_keeps_rows_while_down_and_refuses_past_max_buffer(
    backend: FakeBackend, clock: FakeClock
) -> None:
    sink = make_sink(backend, clock)
    backend.down = True
    records = factory.lineage_records(31)
    for record in records[:30]:
        sink.add(record)  # full batches fail quietly: rows stay, back-off is scheduled
    assert sink.pending_rows == 30
    with pytest.raises(SinkBackpressureError) as raised:
        sink.add(records[30])
    assert raised.value.retry_after_s > 0
    assert sink.pending_rows == 30  # the refused record was not taken

    backend.down = False
    clock.now += 10
    sink.add(records[30])  # room is made by writing what waits
    sink.flush()
    assert backend.rows("lineage_history") == [
        tuple(getattr(r, c) for c in LINEAGE_COLUMNS) for r in records
    ]


def test_flush_if_due_respects_the_back_off(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock)
    sink.add(factory.lineage_records(1)[0])
    backend.down = True
    assert sink.flush_if_due(clock.now + 2) is False
    attempts = backend.attempts
    assert sink.flush_if_due(clock.now + 2.05) is False  # inside the 0.1 s back-off
    assert backend.attempts == attempts
    backend.down = False
    assert sink.flush_if_due(clock.now + 3) is True


def test_rejected_batch_raises_sink_error_and_keeps_its_rows(
    backend: FakeBackend, clock: FakeClock
) -> None:
    sink = make_sink(backend, clock, max_batch_rows=100, max_buffer_rows=100)
    for record in factory.every_kind():
        sink.add(record)  # type: ignore[arg-type]
    backend.reject_table = "kpi_values"
    with pytest.raises(SinkError) as raised:
        sink.flush()
    assert not isinstance(raised.value, SinkBackpressureError)
    assert isinstance(raised.value.__cause__, QueryError)
    assert {t for t, _, _ in backend.inserts} == {"event_log", "lineage_history"}
    written = sum(len(rows) for _, _, rows in backend.inserts)
    assert sink.pending_rows == len(list(factory.every_kind())) - written
    backend.reject_table = None
    sink.flush()
    assert sink.pending_rows == 0


def test_partial_outage_keeps_only_unwritten_tables(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock, max_batch_rows=100, max_buffer_rows=100, flush_timeout_s=0)
    for record in factory.every_kind():
        sink.add(record)  # type: ignore[arg-type]
    backend.down_table = "kpi_breaches"
    with pytest.raises(SinkBackpressureError):
        sink.flush()
    # Tables are written in TABLE_COLUMNS order; the ones before kpi_breaches are done.
    assert {t for t, _, _ in backend.inserts} == {"event_log", "lineage_history", "kpi_values"}
    assert sink.pending_rows == (
        len(factory.breaches()) + len(factory.dead_letters()) + len(factory.review_candidates())
    )
    backend.down_table = None
    clock.now += 1
    sink.flush()
    written = {table: len(backend.rows(table)) for table in TABLE_COLUMNS}
    assert written["lineage_history"] == 12 and written["kpi_breaches"] == 3


def test_close_flushes_and_disconnects(backend: FakeBackend, clock: FakeClock) -> None:
    sink = make_sink(backend, clock)
    sink.add(factory.lineage_records(1)[0])
    sink.close()
    assert backend.closed and len(backend.rows("lineage_history")) == 1


def test_invalid_batch_limits_are_refused(backend: FakeBackend, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        make_sink(backend, clock, max_batch_rows=50, max_buffer_rows=10)
