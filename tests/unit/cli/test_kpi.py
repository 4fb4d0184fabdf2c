"""``imgov kpi show`` filters KPI values on a chDB directory."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from streams.cli.kpi import kpi_query
from streams.cli.main import app
from streams.replay.demo import DemoRun

runner = CliRunner()


def test_query_has_one_condition_per_filter() -> None:
    sql, params = kpi_query(kpi="alert_ppv", site="site-01", model="ICH", window="30d", limit=5)
    assert "FROM kpi_final" in sql and "algorithm_version = '*'" in sql
    assert params == {
        "limit": 5,
        "kpi": "alert_ppv",
        "site": "site-01",
        "model": "ICH",
        "window": "30d",
    }
    every, _ = kpi_query(final=False, version="any")
    assert "FROM kpi_values" in every and "algorithm_version =" not in every.split("WHERE")[1]


def show(demo: DemoRun, *args: str) -> list[dict[str, Any]]:
    path = str(demo.options.chdb_path)
    result = runner.invoke(app, ["kpi", "show", "--chdb", path, "--format", "json", *args])
    assert result.exit_code == 0, result.output
    docs: list[dict[str, Any]] = json.loads(result.stdout)
    return docs


def test_filters_and_limit(small_demo: DemoRun) -> None:
    rows = show(
        small_demo,
        "--kpi",
        "alert_ppv",
        "--site",
        "site-02",
        "--model",
        "ICH",
        "--window",
        "7d",
        "--limit",
        "5",
    )
    assert len(rows) == 5
    assert {(r["kpi"], r["site_id"], r["algorithm_name"], r["window_size"]) for r in rows} == {
        ("alert_ppv", "site-02", "ich-detect", "7d")
    }
    starts = [r["window_start_ms"] for r in rows]
    assert starts == sorted(starts, reverse=True) and all(r["final"] == 1 for r in rows)


def test_all_shows_every_emission_with_revisions(small_demo: DemoRun) -> None:
    final = show(small_demo, "--kpi", "alert_response_rate", "--window", "1d", "--limit", "1000")
    every = show(
        small_demo, "--kpi", "alert_response_rate", "--window", "1d", "--all", "--limit", "100000"
    )
    assert len(every) >= len(final) > 0
    # Late contributions re-emit a final window with revision + 1; the view keeps the last.
    latest: dict[tuple[str, str, int], int] = {}
    for r in every:
        key = (r["site_id"], r["algorithm_name"], r["window_start_ms"])
        latest[key] = max(latest.get(key, 0), r["revision"])
    assert {
        (r["site_id"], r["algorithm_name"], r["window_start_ms"]): r["revision"] for r in final
    } == latest


def test_table_output_and_bad_options(small_demo: DemoRun) -> None:
    path = str(small_demo.options.chdb_path)
    table = runner.invoke(
        app,
        ["kpi", "show", "--chdb", path, "--kpi", "score_psi", "--window", "1d", "--limit", "3"],
        env={"COLUMNS": "200"},
    )
    assert table.exit_code == 0 and "final KPI values" in table.stdout
    assert "(p=" in table.stdout  # score drift with the p-value of its chi-square test
    assert runner.invoke(app, ["kpi", "show", "--chdb", path, "--kpi", "nope"]).exit_code == 2
    assert runner.invoke(app, ["kpi", "show", "--chdb", path, "--window", "2d"]).exit_code == 2
