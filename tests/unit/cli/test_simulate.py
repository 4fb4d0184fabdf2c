"""``imgov simulate`` end to end with files, and the option rules."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.events import AlertChannel, AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.files import read_events
from streams.cli import simulate as simulate_cli
from streams.cli.main import app
from streams.kafka_security import KafkaSecurity
from streams.simulate.config import DEFAULT_START_MS, DriftKind
from streams.simulate.overrides import ConfigError, Overrides, build_config, parse_start_ms
from streams.simulate.producer import Encoder

runner = CliRunner()
TINY = ["simulate", "--days", "2", "--sites", "2", "--studies-per-day", "25", "--seed", "3"]


def _run(*args: str) -> str:
    result = runner.invoke(app, [*TINY, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_writes_identical_files_twice(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _run("--out", str(tmp_path / f"{name}.jsonl"), "--truth", str(tmp_path / f"{name}.truth"))
    events = (tmp_path / "a.jsonl").read_bytes()
    assert events == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.truth").read_bytes() == (tmp_path / "b.truth").read_bytes()
    first = json.loads(events.splitlines()[0])
    assert first["event_type"] in {"inference", "alert", "report"}
    truth = json.loads((tmp_path / "a.truth").read_bytes().splitlines()[0])
    assert {"site_id", "study_uid", "exam", "algorithms"} <= truth.keys()


def test_cli_prints_a_summary(tmp_path: Path) -> None:
    output = _run("--out", str(tmp_path / "e.jsonl"))
    assert "studies" in output and "duplicates" in output and "out of order" in output


def test_cli_dump_config_shows_the_scenarios() -> None:
    output = _run(
        "--dump-config",
        "--drift-site", "2", "--drift-day", "1", "--drift-kind", "score_shift",
        "--unanswered-channel", "MOBILE_PUSH", "--prevalence", "ICH=0.1",
        "--algorithms", "ICH",
    )  # fmt: skip
    config = json.loads(output)
    assert config["drifts"] == [
        {
            "site_id": "site-02",
            "start_day": 1,
            "kind": "score_shift",
            "magnitude": 0.15,
            "finding_code": None,
        }
    ]
    assert config["unanswered_channels"] == ["MOBILE_PUSH"]
    assert [a["finding_code"] for a in config["algorithms"]] == ["ICH"]
    assert config["algorithms"][0]["prevalence"] == 0.1


@pytest.mark.parametrize(
    "args",
    [
        ["--prevalence", "ICH"],
        ["--prevalence", "XYZ=0.1"],
        ["--sensitivity", "ICH=1.5"],
        ["--drift-site", "2"],
        ["--drift-site", "9", "--drift-day", "1"],
        ["--algorithms", "LUNG"],
        ["--start", "next tuesday"],
    ],
)
def test_cli_rejects_bad_options(args: list[str]) -> None:
    result = runner.invoke(app, [*TINY, *args, "--dump-config"])
    assert result.exit_code == 2


def test_cli_rejects_unknown_output_formats_before_generating(tmp_path: Path) -> None:
    result = runner.invoke(app, [*TINY, "--out", str(tmp_path / "events.csv")])
    assert result.exit_code == 2
    assert "FILE.jsonl" in result.output
    assert not (tmp_path / "events.csv").exists()


def test_cli_writes_avro_that_reads_back(tmp_path: Path) -> None:
    _run("--out", str(tmp_path / "e.avro"), "--truth", str(tmp_path / "t.jsonl"))
    _run("--out", str(tmp_path / "e.jsonl"))
    from_avro = list(read_events(tmp_path / "e.avro"))
    from_jsonl = list(read_events(tmp_path / "e.jsonl"))
    assert from_avro == from_jsonl
    assert all(isinstance(e, InferenceEvent | AlertEvent | ReportEvent) for e in from_avro)


def test_cli_produces_with_the_codec_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, float | None]] = []

    async def fake_produce(
        bootstrap: str,
        events: Sequence[Event],
        encode: Encoder,
        *,
        rate: float | None = None,
        on_progress: Callable[[int], None] | None = None,
        security: KafkaSecurity | None = None,
    ) -> int:
        assert encode(events[0])[0] == 0  # Confluent magic byte
        assert security is not None and security.protocol == "PLAINTEXT"  # IMGOV_KAFKA_*
        if on_progress is not None:
            on_progress(len(events))
        calls.append((bootstrap, len(events), rate))
        return len(events)

    monkeypatch.setattr(simulate_cli, "produce_to_kafka", fake_produce)
    _run("--bootstrap", "127.0.0.1:1", "--rate", "500")
    assert calls and calls[0][0] == "127.0.0.1:1" and calls[0][2] == 500.0
    assert calls[0][1] > 50


def test_cli_rate_needs_bootstrap() -> None:
    result = runner.invoke(app, [*TINY, "--rate", "10"])
    assert result.exit_code == 2


def test_config_file_then_options(tmp_path: Path) -> None:
    file = tmp_path / "clinic.toml"
    file.write_text("days = 9\nsites = 4\n[delivery]\nduplicate_rate = 0.2\n", encoding="utf-8")
    config = build_config(file, Overrides(days=5, late_rate=0.0))
    assert (config.days, config.sites) == (5, 4)
    assert config.delivery.duplicate_rate == 0.2
    assert config.delivery.late_rate == 0.0


def test_overrides_build_scenarios() -> None:
    config = build_config(
        None,
        Overrides(
            drift_site="site-03",
            drift_day=4,
            drift_kind=DriftKind.SPECIFICITY_DROP,
            drift_magnitude=0.2,
            drift_finding="PE",
            scanner_change_site="1",
            scanner_change_day=2,
            scanner_manufacturer="TOSHIBA",
            unanswered_channels=(AlertChannel.PAGE,),
            specificity={"pe-detect": 0.8},
        ),
    )
    (drift,) = config.drifts
    assert (drift.site_id, drift.start_day, drift.magnitude, drift.finding_code) == (
        "site-03",
        4,
        0.2,
        "PE",
    )
    (change,) = config.scanner_changes
    assert (change.site_id, change.manufacturer) == ("site-01", "TOSHIBA")
    assert config.unanswered_channels == (AlertChannel.PAGE,)
    assert config.algorithm("PE").specificity == 0.8


def test_invalid_config_files_are_reported(tmp_path: Path) -> None:
    file = tmp_path / "clinic.json"
    file.write_text('{"days": 0}', encoding="utf-8")
    with pytest.raises(ConfigError, match="days"):
        build_config(file, Overrides())
    file.write_text("{nope", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_config(file, Overrides())


def test_start_dates() -> None:
    assert parse_start_ms("2026-01-01") == DEFAULT_START_MS
    assert parse_start_ms("2026-01-01T00:00Z") == DEFAULT_START_MS
    assert parse_start_ms("2026-01-01T01:00+01:00") == DEFAULT_START_MS
