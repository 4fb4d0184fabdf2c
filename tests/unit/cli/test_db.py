"""``imgov db ...`` and ``imgov query`` against a chDB directory (no server)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typer.testing import CliRunner

from sinks.chdb import ChdbSink
from sinks.clickhouse.migrate import load_migrations
from streams.cli.main import app
from tests.unit.sinks import factory

runner = CliRunner()
MIGRATIONS = load_migrations()


def test_migrate_status_and_query(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    first = runner.invoke(app, ["db", "migrate", "--chdb", path])
    assert first.exit_code == 0, first.output
    assert (
        "0001_audit_tables" in first.output
        and f"{len(MIGRATIONS)} migration(s) applied" in first.output
    )
    again = runner.invoke(app, ["db", "migrate", "--chdb", path])
    assert again.exit_code == 0 and "up to date" in again.output

    status = runner.invoke(app, ["db", "status", "--chdb", path])
    assert status.exit_code == 0 and status.output.count("applied") == len(MIGRATIONS)
    assert "layout: single node" in status.output
    # chDB is one process: no cluster, whatever the environment says.
    clustered = runner.invoke(app, ["db", "status", "--chdb", path, "--cluster", "c"])
    assert clustered.exit_code == 0 and "layout: single node" in clustered.output

    with ChdbSink(path) as sink:
        for record in factory.lineage_records(6):
            sink.add(record)

    sql = "SELECT study_uid, revision, event_ids FROM lineage_latest ORDER BY study_uid"
    as_json = runner.invoke(app, ["query", "--chdb", path, "--format", "json", sql])
    assert as_json.exit_code == 0, as_json.output
    docs = json.loads(as_json.stdout)
    assert [d["revision"] for d in docs] == [2, 2, 2]
    assert docs[0]["event_ids"][0].startswith("ev-")

    as_csv = runner.invoke(app, ["query", "--chdb", path, "-f", "csv", sql])
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table[0] == ["study_uid", "revision", "event_ids"] and len(table) == 4

    as_table = runner.invoke(
        app, ["query", "--chdb", path, "SELECT count() AS n FROM lineage_history"]
    )
    assert as_table.exit_code == 0 and "6" in as_table.stdout


def test_errors_exit_non_zero_without_a_traceback(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    bad_sql = runner.invoke(app, ["query", "--chdb", path, "SELECT * FROM nowhere"])
    assert bad_sql.exit_code == 1 and "Traceback" not in bad_sql.output
    bad_format = runner.invoke(app, ["query", "--chdb", path, "-f", "xml", "SELECT 1"])
    assert bad_format.exit_code == 2


def test_drop_before(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    with ChdbSink(path) as sink:
        for record in factory.kpi_emissions():  # November 2023
            sink.add(record)
    result = runner.invoke(app, ["db", "drop-before", "202312", "--chdb", path, "--yes"])
    assert result.exit_code == 0, result.output
    assert "kpi_values partition 202311" in result.output
    count = runner.invoke(
        app, ["query", "--chdb", path, "-f", "json", "SELECT count() AS n FROM kpi_values"]
    )
    assert json.loads(count.stdout) == [{"n": 0}]
