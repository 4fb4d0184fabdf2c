"""``imgov worker --check``: the settings as the worker would use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli.main import app


def test_check_prints_the_group_and_static_membership_it_resolves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMGOV_WORKER_APP_ID", "gov")
    monkeypatch.setenv("IMGOV_WORKER_ROLE", "kpi")
    monkeypatch.setenv("IMGOV_WORKER_DATADIR", str(tmp_path / "state"))
    result = CliRunner().invoke(app, ["worker", "--check", "--demo"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["group_id"] == "gov-kpi"
    assert shown["group_instance_id"].startswith("gov-kpi-")
    assert shown["session_timeout_s"] == 30.0 and shown["shutdown_timeout_s"] == 30.0
    monkeypatch.setenv("IMGOV_WORKER_INSTANCE_ID", "none")
    shown = json.loads(CliRunner().invoke(app, ["worker", "--check", "--demo"]).stdout)
    assert shown["group_instance_id"] is None
