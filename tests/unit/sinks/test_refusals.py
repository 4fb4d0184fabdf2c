"""Poison batches (sinks.refusals): bisection, dead letters, and both sinks using it.

The inserts are fakes that refuse chosen rows the way the real ones do (raising
``DataRefusedError``); tests/integration/test_clickhouse_refusals.py refuses rows on the
real ClickHouse 18.16 server.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from clickhouse_driver import errors as ch_errors

from schemas.records import DeadLetterReason
from sinks.chdb import ChdbSink
from sinks.clickhouse.buffer import RowBuffer
from sinks.clickhouse.migrate import MIGRATIONS_DIR
from sinks.clickhouse.rows import REJECTED_COLUMNS, TABLE_COLUMNS, EventSource, Row, rejected_row
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import (
    BackendUnavailableError,
    DataRefusedError,
    QueryError,
    QueryResult,
    translate_driver_error,
)
from sinks.refusals import (
    TABLE_KEYS,
    escape_rejected_row,
    row_ref,
    split_refused,
    write_table,
)
from tests.unit.sinks import factory

Bad = Callable[[Row], bool]


class FakeInserter:
    """Inserts into a list; refuses a batch holding a row ``bad`` picks, naming it."""

    def __init__(self, bad: Bad, *, down_after: int | None = None) -> None:
        self.bad = bad
        self.down_after = down_after
        self.inserts = 0
        self.written: list[Row] = []

    def __call__(self, rows: Sequence[Row]) -> None:
        self.inserts += 1
        if self.down_after is not None and self.inserts > self.down_after:
            raise BackendUnavailableError("Code: 210. Connection refused", code=210)
        refused = [row for row in rows if self.bad(row)]
        if refused:
            raise DataRefusedError(f"Code: 53. Type mismatch in row {refused[0][0]}", code=53)
        self.written.extend(rows)


def _rows(n: int) -> list[Row]:
    return [(i, f"value-{i}") for i in range(n)]


@pytest.mark.parametrize(
    ("n", "bad_count", "seed"),
    [(1, 1, 0), (2, 1, 1), (7, 2, 2), (100, 1, 3), (100, 5, 4), (1000, 3, 5), (64, 64, 6)],
)
def test_the_split_finds_exactly_the_refused_rows_and_writes_the_others(
    n: int, bad_count: int, seed: int
) -> None:
    rows = _rows(n)
    bad_ids = set(random.Random(seed).sample(range(n), bad_count))
    insert = FakeInserter(lambda row: row[0] in bad_ids)
    with pytest.raises(DataRefusedError) as first:
        insert(rows)

    split = split_refused(rows, insert, str(first.value), max_inserts=10_000)

    assert {row[0] for row, _ in split.refused} == bad_ids
    assert not split.undecided
    assert sorted(insert.written) == [row for row in rows if row[0] not in bad_ids]
    assert split.written == n - bad_count
    assert split.inserts == insert.inserts  # the refused whole included
    for row, error in split.refused:  # each row's own refusal, not its batch's
        assert error.endswith(f"in row {row[0]}")


@pytest.mark.parametrize("n", [2, 10, 1000, 20_000])
def test_one_refused_row_costs_about_log2_n_inserts(n: int) -> None:
    rows = _rows(n)
    insert = FakeInserter(lambda row: row[0] == n // 3)
    split = split_refused(rows, insert, "refused", max_inserts=10_000)
    assert [row[0] for row, _ in split.refused] == [n // 3]
    # the whole, one half per level, the row alone, the halves set aside on the way
    assert split.inserts <= math.ceil(math.log2(n)) + 3


def test_k_refused_rows_cost_about_k_log2_n_inserts() -> None:
    n, k = 20_000, 8
    bad = set(random.Random(7).sample(range(n), k))
    split = split_refused(_rows(n), FakeInserter(lambda row: row[0] in bad), "x", max_inserts=999)
    assert {row[0] for row, _ in split.refused} == bad
    assert split.inserts <= k * (math.ceil(math.log2(n)) + 2) + 1


def test_inserts_are_capped_and_the_rest_is_dead_lettered_as_undecided() -> None:
    rows = _rows(500)
    insert = FakeInserter(lambda row: row[0] % 2 == 0)  # 250 refused rows
    with pytest.raises(DataRefusedError):
        insert(rows)
    split = split_refused(rows, insert, "refused", max_inserts=12)

    assert split.inserts == insert.inserts == 12
    assert split.undecided
    placed = [row for row, _ in split.refused + split.undecided] + insert.written
    assert sorted(placed) == rows  # every row is somewhere, once
    assert all(row[0] % 2 == 0 for row, _ in split.refused)


def test_a_refusal_that_depends_on_the_batch_dead_letters_nothing() -> None:
    # Refuses any batch over 3 rows (as a size limit would): every row passes alone.
    def too_big(rows: Sequence[Row]) -> None:
        if len(rows) > 3:
            raise DataRefusedError("Code: 131. too large", code=131)
        written.extend(rows)

    written: list[Row] = []
    rows = _rows(20)
    split = split_refused(rows, too_big, "too large", max_inserts=1_000)
    assert not split.refused and not split.undecided
    assert sorted(written) == rows


def test_an_outage_during_the_split_propagates_and_is_not_split() -> None:
    rows = _rows(100)
    insert = FakeInserter(lambda row: row[0] == 5, down_after=3)
    with pytest.raises(BackendUnavailableError):
        write_table("event_log", rows, insert, now_ms=1)
    assert insert.inserts == 4  # the whole, two halves, then the outage: no more


@pytest.mark.parametrize(
    "error",
    [
        BackendUnavailableError("Code: 210. Connection refused", code=210),
        QueryError("Code: 60. Table imgov.event_log doesn't exist", code=60),
    ],
)
def test_outages_and_statement_errors_are_not_split(error: QueryError) -> None:
    calls: list[int] = []

    def insert(rows: Sequence[Row]) -> None:
        calls.append(len(rows))
        raise error

    with pytest.raises(type(error)):
        write_table("event_log", _rows(10), insert, now_ms=1)
    assert calls == [10]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ch_errors.TypeMismatchError("Column revision: argument out of range"), DataRefusedError),
        (ch_errors.TooLargeStringSize(), DataRefusedError),
        (ch_errors.LogicalError("Unknown element 'MR' for type Enum8('CT' = 1)"), DataRefusedError),
        (UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates"), DataRefusedError),
        (AttributeError("'NoneType' object has no attribute 'encode'"), DataRefusedError),
        (struct.error("argument out of range"), DataRefusedError),
        (
            ch_errors.ServerException("Value passed to 'throwIf' function is non zero.", code=395),
            DataRefusedError,
        ),
        (ch_errors.ServerException("Cannot parse string 'x' as UInt8", code=6), DataRefusedError),
        (ch_errors.ServerException("Table is read only", code=242), BackendUnavailableError),
        (ch_errors.ServerException("Too many parts", code=252), BackendUnavailableError),
        (ch_errors.ServerException("Memory limit exceeded", code=241), BackendUnavailableError),
        (
            ch_errors.ServerException("Too many simultaneous queries", code=202),
            BackendUnavailableError,
        ),
        (ch_errors.NetworkError("Connection refused"), BackendUnavailableError),
        (ch_errors.SocketTimeoutError("timed out"), BackendUnavailableError),
        (ConnectionResetError("reset"), BackendUnavailableError),
        (ch_errors.ServerException("Table imgov.x doesn't exist", code=60), QueryError),
        (ch_errors.ServerException("No such column foo", code=16), QueryError),
    ],
)
def test_driver_errors_are_told_apart(exc: BaseException, kind: type[QueryError]) -> None:
    translated = translate_driver_error(exc, "insert into t failed")
    assert type(translated) is kind


# -- dead letters --------------------------------------------------------------------------


def _event_rows() -> list[Row]:
    events = [e for e in factory.every_kind() if type(e).__name__.endswith("Event")]
    sink_rows: list[Row] = []
    for i, event in enumerate(events):
        buffer = RowBuffer()
        buffer.add_event(event, EventSource("t.inference", 2, 40 + i), 5)  # type: ignore[arg-type]
        sink_rows += buffer.rows["event_log"]
    return sink_rows


def test_each_refused_row_becomes_a_sink_rejected_dead_letter() -> None:
    rows = _event_rows()
    assert len(rows) >= 2
    bad_event = rows[1][2]
    insert = FakeInserter(lambda row: row[2] == bad_event)

    outcome = write_table("event_log", rows, insert, now_ms=123)

    assert outcome.error is not None and outcome.refused == 1
    assert outcome.written == len(rows) - 1
    (letter,) = outcome.letters
    assert letter.reason is DeadLetterReason.SINK_REJECTED
    assert re.match(r"event_log refused the row \(ref [0-9a-f]{16}\): Code: 53\.", letter.message)
    assert json.loads(letter.value) == {
        name: list(v) if isinstance(v, tuple) else v
        for name, v in zip(TABLE_COLUMNS["event_log"], rows[1], strict=True)
    }
    assert letter.key == "|".join(str(v) for v in rows[1][:3]).encode()
    assert [(h.key, h.value) for h in letter.headers] == [("table", b"event_log")]
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "t.inference",
        2,
        41,
    )
    assert letter.event_id == bad_event and letter.study_uid == rows[1][1]
    assert letter.received_at_ms == 123
    rejected_row(letter, 0)  # it maps to a rejected_events row


def test_the_poison_batch_is_logged_with_references_not_identifiers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = _event_rows()
    insert = FakeInserter(lambda row: row is rows[0])
    with caplog.at_level(logging.WARNING, logger="imgov.sink"):
        outcome = write_table("event_log", rows, insert, now_ms=1)
    (record,) = caplog.records
    text = record.getMessage()
    assert f"event_log refused 1 of {len(rows)} rows" in text and "inserts" in text
    ref = row_ref("event_log", rows[0])
    assert ref in text and f"ref {ref}" in outcome.letters[0].message  # found from the log
    assert str(rows[0][1]) not in text  # never the study UID
    assert str(rows[0][9]) not in text  # never the payload


def _rejected_rows() -> list[Row]:
    return [
        rejected_row(letter, 9)
        for letter in factory.every_kind()
        if type(letter).__name__ == "DeadLetter"
    ]  # type: ignore[arg-type]


def test_a_refused_dead_letter_is_escaped_and_written_again() -> None:
    rows = _rejected_rows()
    poisoned = list(rows[0])
    poisoned[REJECTED_COLUMNS.index("message")] = "bad \ud800 surrogate"
    poisoned[REJECTED_COLUMNS.index("source_partition")] = 2**40
    rows[0] = tuple(poisoned)

    def insert(batch: Sequence[Row]) -> None:
        for row in batch:
            message = row[REJECTED_COLUMNS.index("message")]
            message.encode("utf-8")  # what clickhouse-driver does
            if not -(2**31) <= row[1] < 2**31:
                raise DataRefusedError("Code: 53. argument out of range", code=53)
        written.extend(batch)

    def refusing(batch: Sequence[Row]) -> None:
        try:
            insert(batch)
        except UnicodeEncodeError as exc:
            raise DataRefusedError(str(exc)) from exc

    written: list[Row] = []
    outcome = write_table("rejected_events", rows, refusing, now_ms=1)
    assert outcome.refused == 1 and not outcome.letters and not outcome.unwritable
    assert outcome.written == len(rows)
    escaped = written[-1]
    assert escaped[REJECTED_COLUMNS.index("message")] == "bad \\ud800 surrogate"
    assert escaped[1] == -1
    assert escaped == escape_rejected_row(rows[0])


def test_a_dead_letter_refused_even_escaped_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = _rejected_rows()
    doomed = rows[-1][REJECTED_COLUMNS.index("value_sha256")]

    def insert(batch: Sequence[Row]) -> None:
        if any(row[REJECTED_COLUMNS.index("value_sha256")] == doomed for row in batch):
            raise DataRefusedError("Code: 395. no", code=395)

    with caplog.at_level(logging.ERROR, logger="imgov.sink"):
        outcome = write_table("rejected_events", rows, insert, now_ms=1)
    ref = row_ref("rejected_events", escape_rejected_row(rows[-1]))
    assert outcome.unwritable == [ref]
    assert outcome.written == len(rows) - 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and ref in errors[0]


def test_table_keys_are_the_order_by_of_the_migrations() -> None:
    ddl = "\n".join(path.read_text() for path in sorted(MIGRATIONS_DIR.glob("*.sql")))
    for table, key in TABLE_KEYS.items():
        match = re.search(
            rf"CREATE TABLE IF NOT EXISTS {table}\b.*?ORDER BY \(([^)]*)\)", ddl, re.DOTALL
        )
        assert match, table
        assert tuple(c.strip() for c in match.group(1).split(",")) == key


# -- the sinks -------------------------------------------------------------------------------


class RefusingBackend:
    """An in-memory server that refuses lineage rows of one study (like a bad value)."""

    database = "imgov_test"

    def __init__(self, study_uid: str) -> None:
        self.study_uid = study_uid
        self.tables: dict[str, list[Row]] = {}
        self.inserts = 0

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> QueryResult:
        return [], []

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.inserts += 1
        if table == "lineage_history" and any(row[1] == self.study_uid for row in rows):
            raise DataRefusedError("Code: 53. Column revision: argument out of range", code=53)
        self.tables.setdefault(table, []).extend(tuple(row) for row in rows)

    def close(self) -> None:
        pass


def test_the_server_sink_writes_the_rest_and_dead_letters_in_the_same_flush() -> None:
    records = list(factory.every_kind())
    lineage = [r for r in records if type(r).__name__ == "LineageRecord"]
    bad_study = lineage[0].study_uid  # type: ignore[attr-defined]
    bad = [r for r in lineage if r.study_uid == bad_study]  # type: ignore[attr-defined]
    backend = RefusingBackend(bad_study)
    sink = ClickHouseSink(backend, wall_clock_ms=lambda: 5)  # type: ignore[arg-type]
    for record in records:
        sink.add(record)  # type: ignore[arg-type]
    sink.flush()  # returns: nothing is retried

    assert sink.pending_rows == 0
    assert len(backend.tables["lineage_history"]) == len(lineage) - len(bad)
    refused = [
        row
        for row in backend.tables["rejected_events"]
        if row[REJECTED_COLUMNS.index("reason")] == "SINK_REJECTED"
    ]
    assert len(refused) == len(bad)
    (outcome,) = sink.take_refusals()
    assert outcome.table == "lineage_history" and outcome.refused == len(bad)
    assert [letter.value for letter in outcome.letters] == [row[7] for row in refused]
    assert sink.take_refusals() == []
    assert sink.rows_written_by_table["lineage_history"] == len(lineage) - len(bad)


def test_the_chdb_sink_splits_a_batch_arrow_cannot_encode(tmp_path: Path) -> None:
    records = list(factory.every_kind())
    lineage = [r for r in records if type(r).__name__ == "LineageRecord"]
    # UInt32 in the table: the value has no Arrow uint32
    poisoned = lineage[0].model_copy(update={"revision": 2**32})  # type: ignore[attr-defined]
    with ChdbSink(tmp_path / "chdb") as sink:
        for record in records:
            sink.add(poisoned if record is lineage[0] else record)  # type: ignore[arg-type]
        sink.flush()
        assert sink.rows_refused == 1
        _, stored = sink.backend.execute("SELECT count() FROM lineage_history", None)
        assert stored == [(len(lineage) - 1,)]
        _, letters = sink.backend.execute(
            "SELECT message, value FROM rejected_events WHERE reason = 'SINK_REJECTED'"
        )
    ((message, value),) = letters
    assert re.match(r"lineage_history refused the row \(ref \w+\): cannot encode 1 rows", message)
    assert json.loads(value)["revision"] == 2**32
