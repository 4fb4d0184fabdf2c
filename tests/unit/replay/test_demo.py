"""``imgov demo``: a fresh directory every run, the summary, the report, the queries."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sinks.query import ChdbBackend
from streams.cli.main import app
from streams.replay.demo import MARKER, DemoError, replay_chunk_size, reset_workdir

runner = CliRunner()


def test_reset_refuses_a_directory_the_demo_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(DemoError, match="not created by `imgov demo`"):
        reset_workdir(precious)
    assert (precious / "thesis.tex").exists()


def test_reset_empties_its_own_directory(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    reset_workdir(demo)
    (demo / "old.jsonl").write_text("{}")
    reset_workdir(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]


def test_replay_chunks_hold_about_half_an_hour_of_events() -> None:
    assert replay_chunk_size(events=45_000, days=90) == 10
    assert replay_chunk_size(events=100, days=90) == 8
    assert replay_chunk_size(events=4_800_000, days=100) == 1000


def test_demo_twice_gives_the_same_tables_and_a_report(tmp_path: Path) -> None:
    directory, report = tmp_path / "demo", tmp_path / "report.html"
    args = [
        "demo",
        "--dir",
        str(directory),
        "--report",
        str(report),
        "--days",
        "4",
        "--sites",
        "1",
        "--studies-per-day",
        "20",
        "--drift-site",
        "none",
        "--no-progress",
    ]
    counts = []
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        backend = ChdbBackend(directory / "chdb")
        try:
            _, rows = backend.execute(
                "SELECT (SELECT count() FROM lineage_history), (SELECT count() FROM event_log), "
                "(SELECT count() FROM kpi_values)"
            )
        finally:
            backend.close()
        counts.append(rows[0])
    assert counts[0] == counts[1] and counts[0][0] > 0

    out = " ".join(result.stdout.split())
    assert "Scorecard per model and site" in out
    assert "Review candidates" in out
    assert f'imgov query --chdb {directory / "chdb"} "SELECT' in out
    assert "SELECT algorithm_name, revision, outcome" in out
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
