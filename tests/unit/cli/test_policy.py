"""``imgov policy simulate``: the table, the JSON, the worker processes, the option rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from tests.unit.replay.test_policy_sim import POLICY

runner = CliRunner()
SHORT = ["--seed", "3", "--days", "20", "--shift-start", "12", "--horizon", "25"]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def _simulate(*args: str) -> str:
    result = runner.invoke(app, ["policy", "simulate", "--no-progress", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_prints_a_table_per_volume(policy: Path) -> None:
    out = _simulate("--policy", str(policy), *SHORT, "--seeds", "2", "--shift", "15", "--jobs", "1")
    text = " ".join(out.split())
    assert text.startswith("Policy v1 on pe-detect at 60 studies/day: prevalence 0.12,")
    for word in ("rule", "severity", "false", "per year", "-15 pts", "median", "p90", "detected"):
        assert word in text
    rows = {
        row.split()[0]: row.split()
        for row in out.splitlines()
        if row.startswith(" ") and row.strip()
    }
    assert set(rows) >= {"sustained-discordance", "alert-ppv-low", "all"}
    sustained = rows["sustained-discordance"]
    assert sustained[1] == "CRITICAL" and sustained[-1] == "2/2"
    assert ">25" not in sustained[3:5]  # median and p90: detected within the horizon
    assert f"Policy: {policy}. False alarms" in text
    assert "2 stable runs of 20 days" in text


def test_json_has_every_rule_shift_and_seed(policy: Path) -> None:
    out = _simulate(
        "--policy", str(policy), *SHORT, "--seeds", "1", "--shift", "15", "--shift", "3",
        "--volume", "40", "--volume", "60", "--jobs", "1", "--json",
    )  # fmt: skip
    document: dict[str, Any] = json.loads(out)
    assert document["policy"] == {"path": str(policy), "version": 1}
    assert (document["seeds"], document["shift_start_day"], document["horizon_days"]) == (1, 12, 25)
    assert [v["volume"] for v in document["volumes"]] == [40.0, 60.0]
    assert document["timing"]["runs"] == 2 * 3 and document["timing"]["seed_years"] > 0
    for volume in document["volumes"]:
        rules = {rule["rule_id"]: rule for rule in volume["rules"]}
        assert list(rules)[-1] == "all rules" and len(rules) == 5
        assert volume["model_site_years"] == pytest.approx(20 / 365)
        for rule in rules.values():
            assert [s["shift_points"] for s in rule["shifts"]] == [15.0, 3.0]
            assert all(len(s["delays_days"]) == s["runs"] == 1 for s in rule["shifts"])
        big = rules["sustained-discordance"]["shifts"][0]
        assert big["detected"] == 1 and None not in big["delays_days"]
        assert big["median_days"] <= big["p90_days"] <= 25


def test_worker_processes_give_the_numbers_of_one_process(policy: Path) -> None:
    tiny = ["--policy", str(policy), "--seeds", "1", "--days", "8", "--shift-start", "4"]
    tiny += ["--horizon", "4", "--shift", "15", "--json"]
    one, two = (json.loads(_simulate(*tiny, "--jobs", jobs)) for jobs in ("1", "2"))
    assert (one["timing"]["jobs"], two["timing"]["jobs"]) == (1, 2)
    assert one["volumes"] == two["volumes"]


def test_the_settings_file_names_the_policy(policy: Path, tmp_path: Path) -> None:
    settings = tmp_path / "governance.toml"
    settings.write_text(f'breach_policy = "{policy.name}"\n', encoding="utf-8")
    args = ["--config", str(settings), "--seeds", "1", "--days", "3", "--shift", "5"]
    document = json.loads(_simulate(*args, "--shift-start", "1", "--horizon", "2", "--json"))
    assert document["policy"] == {"path": str(policy), "version": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shift", "99"], "shift 99 points is not in"),
        (["--specificity", "1.5"], "--specificity"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_options_are_refused(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["policy", "simulate", "--no-progress", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_broken_policy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("version = 0\n", encoding="utf-8")
    result = runner.invoke(app, ["policy", "simulate", "--policy", str(path)])
    assert result.exit_code == 2
    assert "cannot load the breach policy" in result.output
