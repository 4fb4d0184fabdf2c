"""The audit schema and ClickHouseSink on the real ClickHouse 18.16 server.

Each test works in its own database ``imgov_test_<uuid>``, created and dropped by the
writer user (18.16's users.xml lets ``imgov`` create databases). The compliance test
migrates the shared ``imgov`` database, the only one the compliance user may read.
The same migration files are applied to chDB in the same tests: they run unchanged.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from sinks.base import SinkBackpressureError
from sinks.chdb import ChdbSink
from sinks.clickhouse.migrate import load_migrations, migrate
from sinks.clickhouse.rows import TABLE_COLUMNS, lineage_from_row
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend, QueryBackend
from streams.core.lineage.hashchain import verify_chain
from streams.paths import REPO_ROOT
from tests.integration.conftest import CLICKHOUSE_HOST, CLICKHOUSE_PORT
from tests.unit.sinks import factory

pytestmark = pytest.mark.clickhouse

VIEWS = ("lineage_latest", "kpi_final", "model_scorecard", "breaches_open")
CLICKHOUSE_SH = REPO_ROOT / "infra" / "clickhouse" / "clickhouse.sh"


def writer_settings() -> ClickHouseSettings:
    return ClickHouseSettings(
        host=CLICKHOUSE_HOST, port=CLICKHOUSE_PORT, user="imgov", database="imgov"
    )


@pytest.fixture
def database(clickhouse_writer: Client) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"imgov_test_{uuid.uuid4().hex[:12]}"
    clickhouse_writer.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        clickhouse_writer.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def backend(database: str) -> Iterator[ClickHouseBackend]:
    opened = ClickHouseBackend.connect(writer_settings(), database=database)
    try:
        yield opened
    finally:
        opened.close()


def write_everything(sink: ClickHouseSink | ChdbSink) -> None:
    for record in factory.every_kind():
        sink.add(record)  # type: ignore[arg-type]
    sink.flush()


def snapshot(backend: QueryBackend) -> dict[str, list[tuple[object, ...]]]:
    """Every view's rows in a stable order, values in one form: chDB results come as
    JSON (a whole Float64 is an int, a DateTime a string), the server's as Python types."""

    def normal(value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return round(float(value), 9)
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        return value

    out = {}
    for view in VIEWS:
        columns, rows = backend.execute(f"SELECT * FROM {view}")
        out[view] = sorted((tuple(normal(v) for v in row) for row in rows), key=repr)
        assert columns, view
    return out


def test_migrations_apply_twice_and_match_chdb(backend: ClickHouseBackend, tmp_path: Path) -> None:
    assert [m.version for m in migrate(backend)] == [m.version for m in load_migrations()]
    assert migrate(backend) == []
    # Interrupted after its statements, before recording them: every statement runs
    # again, ADD COLUMN included (18.16 has no ADD COLUMN IF NOT EXISTS).
    backend.execute("DROP TABLE schema_migrations")
    assert len(migrate(backend)) == len(load_migrations())
    query = (
        "SELECT table, name, type, default_kind, default_expression FROM system.columns "
        "WHERE database = currentDatabase() ORDER BY table, name"
    )
    _, on_server = backend.execute(query)
    with ChdbSink(tmp_path / "chdb") as sink:
        _, on_chdb = sink.backend.execute(query)
    # Same tables, views and columns with the same types: the files ran unchanged.
    # (Default expressions are rendered differently by 18.16 and 26.x.)
    assert [row[:4] for row in on_server] == [tuple(row[:4]) for row in on_chdb]


def test_sink_writes_and_redelivery_leaves_views_unchanged(
    backend: ClickHouseBackend, tmp_path: Path
) -> None:
    migrate(backend)
    sink = ClickHouseSink(backend, max_batch_rows=7)
    write_everything(sink)
    counts = {t: backend.execute(f"SELECT count() FROM {t}")[1][0][0] for t in TABLE_COLUMNS}
    assert counts == {
        "event_log": 3,
        "lineage_history": 12,
        "kpi_values": 4,
        "kpi_breaches": 3,
        "rejected_events": 2,
        "review_candidates": 2,
    }
    before = snapshot(backend)
    write_everything(sink)  # redelivery
    write_everything(sink)
    assert snapshot(backend) == before
    assert backend.execute("SELECT count() FROM lineage_latest")[1] == [(6,)]
    assert backend.execute("SELECT breach_id FROM breaches_open")[1] == [("b-2",)]
    assert backend.execute("SELECT revision, numerator FROM kpi_final")[1] == [(2, 4.0)]

    # Lossless lineage: audit verify can recompute the chain from the rows.
    columns, rows = backend.execute("SELECT * FROM lineage_history")
    read = [lineage_from_row(dict(zip(columns, row, strict=True))) for row in rows]
    assert verify_chain(read) == []
    assert {r.model_dump_json() for r in read} == {
        r.model_dump_json() for r in factory.lineage_records(12)
    }
    _, raw = backend.execute("SELECT hex(value) FROM rejected_events WHERE source_offset = 4711")
    assert raw == [(factory.dead_letters()[0].value.hex().upper(),)] * 3

    # The same records through chDB give the same views.
    with ChdbSink(tmp_path / "chdb") as embedded:
        write_everything(embedded)
        write_everything(embedded)
        assert snapshot(embedded.backend) == before


def test_compliance_user_reads_the_views_and_cannot_write(
    clickhouse_writer: Client, clickhouse_compliance: Client
) -> None:
    shared = ClickHouseBackend(clickhouse_writer, "imgov")
    migrate(shared)  # idempotent: the shared database may already be migrated
    for view in VIEWS:
        clickhouse_compliance.execute(f"SELECT * FROM {view} LIMIT 1")
    for table in TABLE_COLUMNS:
        clickhouse_compliance.execute(f"SELECT count() FROM {table}")
    with pytest.raises(ch_errors.ServerException) as raised:
        clickhouse_compliance.execute(
            "INSERT INTO kpi_breaches (breach_id, state) VALUES", [("x", "OPEN")]
        )
    assert raised.value.code == 164  # READONLY


def _clickhouse(command: str) -> None:
    subprocess.run(
        ["bash", str(CLICKHOUSE_SH), command], check=True, timeout=120, capture_output=True
    )


def test_sink_survives_a_server_outage_without_loss(
    backend: ClickHouseBackend, clickhouse_writer: Client
) -> None:
    migrate(backend)
    records = factory.lineage_records(300)
    sink = ClickHouseSink(
        backend, max_batch_rows=50, max_batch_age_s=0.0, flush_timeout_s=0.5, retry_max_s=0.5
    )
    for record in records[:100]:
        sink.add(record)
    sink.flush()
    # 18.16 waits for open connections before it stops: close ours (they reconnect).
    backend.client.disconnect()
    clickhouse_writer.disconnect()
    try:
        _clickhouse("stop")
        for record in records[100:]:
            sink.add(record)  # full batches fail quietly and stay buffered
        assert sink.pending_rows == 200
        time.sleep(0.5)  # past the back-off of the failed batch write
        assert sink.flush_if_due(time.monotonic()) is False
        with pytest.raises(SinkBackpressureError):
            sink.flush()
        assert sink.pending_rows == 200
    finally:
        _clickhouse("start")
    deadline = time.monotonic() + 60
    while True:
        try:
            sink.flush()
            break
        except SinkBackpressureError as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(exc.retry_after_s)
    assert sink.pending_rows == 0
    _, rows = backend.execute("SELECT count(), uniqExact(study_uid, revision) FROM lineage_history")
    assert rows == [(300, 300)]
    sink.close()
