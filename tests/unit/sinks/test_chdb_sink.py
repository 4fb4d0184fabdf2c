"""ChdbSink on a real embedded chDB directory (no server): tables, views, redelivery.

chDB allows one open data directory per process, and pytest runs every test in one
process: each test closes what it opens (the ``sink`` fixture, ``with`` blocks).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import LineageRecord
from sinks.base import Sink, SinkError
from sinks.chdb import ChdbSink, arrow_type
from sinks.clickhouse.migrate import load_migrations
from sinks.clickhouse.rows import TABLE_COLUMNS, EventSource, lineage_from_row
from sinks.query import BackendUnavailableError, ChdbBackend
from streams.core.lineage.hashchain import verify_chain
from streams.core.lineage.pseudonym import Pseudonymiser
from tests.unit.sinks import factory
from tests.unit.sinks.strategies import lineage_records


@pytest.fixture(params=[True, False], ids=["background", "inline"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChdbSink]:
    opened = ChdbSink(tmp_path / "chdb", background=request.param)
    try:
        yield opened
    finally:
        opened.close()


def scalar(sink: ChdbSink, sql: str) -> object:
    _, rows = sink.backend.execute(sql)
    return rows[0][0]


def write_everything(sink: ChdbSink, times: int = 1) -> None:
    for _ in range(times):
        for record in factory.every_kind():
            sink.add(record)  # type: ignore[arg-type]
        sink.flush()


def test_is_a_sink_and_migrates_on_open(sink: ChdbSink) -> None:
    assert isinstance(sink, Sink)
    _, rows = sink.backend.execute("SELECT version FROM schema_migrations FINAL ORDER BY version")
    assert [v for (v,) in rows] == [m.version for m in load_migrations()]
    _, tables = sink.backend.execute("SHOW TABLES")
    names = {t for (t,) in tables}
    assert (
        set(TABLE_COLUMNS) | {"lineage_latest", "kpi_final", "model_scorecard", "breaches_open"}
        <= names
    )


def test_every_kind_is_stored(sink: ChdbSink) -> None:
    write_everything(sink)
    counts = {t: scalar(sink, f"SELECT count() FROM {t}") for t in TABLE_COLUMNS}
    assert counts == {
        "event_log": 3,
        "lineage_history": 12,
        "kpi_values": 4,
        "kpi_breaches": 3,
        "rejected_events": 2,
        "review_candidates": 2,
    }
    assert sink.rows_written == sum(counts.values())


def test_lineage_read_back_verifies_and_equals_what_was_written(sink: ChdbSink) -> None:
    written = factory.lineage_records(40)
    for record in written:
        sink.add(record)
    sink.flush()
    columns, rows = sink.backend.execute("SELECT * FROM lineage_history")
    read = [lineage_from_row(dict(zip(columns, row, strict=True))) for row in rows]
    assert sorted(read, key=_order) == sorted(written, key=_order)
    assert verify_chain(read) == []


def _order(record: LineageRecord) -> tuple[str, str, int]:
    return record.site_id, record.study_uid, record.revision


def test_redelivery_leaves_every_view_unchanged(sink: ChdbSink) -> None:
    write_everything(sink)
    views = ("lineage_latest", "kpi_final", "model_scorecard", "breaches_open")
    before = {v: sink.backend.execute(f"SELECT * FROM {v} ORDER BY 1, 2, 3, 4") for v in views}
    write_everything(sink, times=2)  # at-least-once: the same records twice more
    assert scalar(sink, "SELECT count() FROM lineage_history") >= 12  # duplicates stored ...
    after = {v: sink.backend.execute(f"SELECT * FROM {v} ORDER BY 1, 2, 3, 4") for v in views}
    assert after == before  # ... and invisible
    final_counts = {t: scalar(sink, f"SELECT count() FROM {t} FINAL") for t in TABLE_COLUMNS}
    assert final_counts == {
        "event_log": 3,
        "lineage_history": 12,
        "kpi_values": 1,
        "kpi_breaches": 3,
        "rejected_events": 2,
        "review_candidates": 1,
    }


def test_views_pick_the_latest_revision_and_the_final_kpi(sink: ChdbSink) -> None:
    write_everything(sink)
    assert scalar(sink, "SELECT count() FROM lineage_latest") == 6
    assert scalar(sink, "SELECT min(revision) FROM lineage_latest") == 2
    columns, rows = sink.backend.execute("SELECT * FROM kpi_final")
    (row,) = rows
    final = dict(zip(columns, row, strict=True))
    assert final["revision"] == 2 and final["numerator"] == 4
    _, open_breaches = sink.backend.execute("SELECT breach_id FROM breaches_open")
    assert open_breaches == [("b-2",)]


def test_kpi_final_ignores_emission_order(tmp_path: Path) -> None:
    emissions = factory.kpi_emissions()
    with ChdbSink(tmp_path / "chdb") as sink:
        for record in reversed(emissions):  # revision 2 first, current values last
            sink.add(record)
            sink.flush()  # one part each: a merge order cannot help
        _, rows = sink.backend.execute("SELECT revision, value FROM kpi_final")
        assert rows == [(2, emissions[-1].value)]
        _, latest = sink.backend.execute("SELECT revision, final, numerator FROM kpi_values FINAL")
        assert latest == [(2, 1, 4)]  # version = revision * 2 + final: the last emission wins


def test_scorecard_counts_the_confusion_matrix(sink: ChdbSink) -> None:
    records = factory.lineage_records(120, sites=1)
    for record in records:
        sink.add(record)
    sink.flush()
    latest = [r for r in records if r.revision == 2]
    tp = sum(r.outcome == "TRUE_POSITIVE" for r in latest)
    fp = sum(r.outcome == "FALSE_POSITIVE" for r in latest)
    _, rows = sink.backend.execute(
        "SELECT sum(records), sum(tp), sum(fp), sum(tp) / (sum(tp) + sum(fp)) FROM model_scorecard"
    )
    assert rows == [(len(latest), tp, fp, pytest.approx(tp / (tp + fp)))]
    _, rows = sink.backend.execute(
        "SELECT algorithm_version, ppv, report_tat_p50_ms FROM model_scorecard ORDER BY 1"
    )
    assert [r[0] for r in rows] == ["2.0.4", "2.1.0"]
    assert all(r[2] is not None and r[2] > 0 for r in rows)


def test_dead_letter_bytes_and_event_payloads(tmp_path: Path) -> None:
    pseudonymiser = Pseudonymiser(b"s" * 32)
    with ChdbSink(tmp_path / "chdb", clean_event=pseudonymiser.pseudonymise_event) as sink:
        write_everything(sink)
        sink.add_event(factory.input_events()[0], EventSource("events.jsonl", 0, 17))
        sink.flush()
        _, rows = sink.backend.execute(
            "SELECT hex(value), hex(key), header_keys, length(header_values) "
            "FROM rejected_events ORDER BY source_offset DESC"
        )
        framed = factory.dead_letters()[0]
        assert rows[0] == (
            framed.value.hex().upper(),
            framed.key.hex().upper(),
            ["imgov.schema_id", "empty"],
            2,
        )
        _, payloads = sink.backend.execute("SELECT payload FROM event_log")
        text = " ".join(p for (p,) in payloads)
        assert "PATIENT-123" not in text and "DR-WHO" not in text and "RAD-7" not in text
        assert json.loads(payloads[0][0])["event_id"]
        _, sources = sink.backend.execute(
            "SELECT source_topic, source_offset FROM event_log FINAL WHERE event_id = 'inf-1'"
        )
        assert sources == [("events.jsonl", 17)]  # the redelivery with a source replaced it


def test_batches_are_written_while_adding(tmp_path: Path) -> None:
    with ChdbSink(tmp_path / "chdb", batch_rows=100) as sink:
        for record in factory.lineage_records(250):
            sink.add(record)
        assert sink.pending_rows == 50
        sink.flush()
        assert sink.rows_written == 250
        assert scalar(sink, "SELECT count() FROM lineage_history") == 250


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    with ChdbSink(tmp_path / "chdb") as sink:
        sink.add(factory.lineage_records(1)[0])
    with ChdbSink(tmp_path / "chdb") as sink:
        assert scalar(sink, "SELECT count() FROM lineage_history") == 1
        assert scalar(sink, "SELECT count() FROM schema_migrations") == len(load_migrations())


def test_one_directory_per_process(tmp_path: Path) -> None:
    with ChdbSink(tmp_path / "one") as sink:
        with pytest.raises(BackendUnavailableError, match="one data directory per process"):
            ChdbSink(tmp_path / "two")
        # A second connection to the same directory is fine.
        other = ChdbBackend(tmp_path / "one")
        try:
            assert other.execute("SELECT 1") == (["1"], [(1,)])
        finally:
            other.close()
        sink.add(factory.lineage_records(1)[0])
    with ChdbSink(tmp_path / "two") as second:  # free again once the first is closed
        assert second.pending_rows == 0


def test_a_rejected_batch_keeps_its_rows(sink: ChdbSink) -> None:
    for record in factory.lineage_records(3):
        sink.add(record)
    sink.backend.execute("RENAME TABLE lineage_history TO lineage_history_away")
    with pytest.raises(SinkError, match="lineage_history"):
        sink.flush()
    assert sink.pending_rows == 3
    sink.backend.execute("RENAME TABLE lineage_history_away TO lineage_history")
    sink.flush()
    assert scalar(sink, "SELECT count() FROM lineage_history") == 3


def test_arrow_types() -> None:
    assert str(arrow_type("Nullable(Int64)")) == "int64"
    assert str(arrow_type("Array(Nullable(String))")) == "list<item: binary>"
    with pytest.raises(ValueError):
        arrow_type("Decimal(10, 2)")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(lineage_records(), min_size=1, max_size=8))
def test_any_lineage_record_round_trips_through_chdb(
    chdb_session: ChdbSink, records: list[LineageRecord]
) -> None:
    chdb_session.backend.execute("TRUNCATE TABLE lineage_history")
    for record in records:
        chdb_session.add(record)
    chdb_session.flush()
    columns, rows = chdb_session.backend.execute("SELECT * FROM lineage_history")
    read = [lineage_from_row(dict(zip(columns, row, strict=True))) for row in rows]
    key = LineageRecord.model_dump_json
    assert sorted(map(key, read)) == sorted(map(key, records))


@pytest.fixture
def chdb_session(tmp_path: Path) -> Iterator[ChdbSink]:
    opened = ChdbSink(tmp_path / "chdb", background=False)
    try:
        yield opened
    finally:
        opened.close()
