"""``imgov schemas``: check, register, list."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from schemas.file_registry import REGISTRY_DIR
from schemas.subjects import AVSC_DIR
from streams.cli.schemas import schemas_app

runner = CliRunner()


def _copy(tmp_path: Path) -> list[str]:
    shutil.copytree(AVSC_DIR, tmp_path / "avro")
    shutil.copytree(REGISTRY_DIR, tmp_path / "registry")
    return ["--avsc-dir", str(tmp_path / "avro"), "--registry-dir", str(tmp_path / "registry")]


def _versions() -> int:
    """Versions registered in the repository's file registry, all subjects."""
    return sum(
        len(json.loads(path.read_text(encoding="utf-8"))["versions"])
        for path in REGISTRY_DIR.glob("*.json")
    )


def test_check_passes_on_the_repository() -> None:
    result = runner.invoke(schemas_app, ["check"])
    assert result.exit_code == 0, result.output
    assert f"ok: 9 schemas, {_versions()} registered versions" in result.output


def test_imgov_has_the_schemas_commands() -> None:
    from streams.cli.main import app

    result = runner.invoke(app, ["schemas", "list"])
    assert result.exit_code == 0, result.output
    assert "imgov.events.v1.InferenceEvent" in result.output and "v2" in result.output


def test_check_fails_on_an_incompatible_change_and_register_refuses_it(tmp_path: Path) -> None:
    options = _copy(tmp_path)
    path = tmp_path / "avro" / "AlertEvent.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["fields"].append({"name": "ward", "type": "string"})
    path.write_text(json.dumps(schema), encoding="utf-8")
    result = runner.invoke(schemas_app, ["check", *options])
    assert result.exit_code == 1
    assert "ward: new field without a default" in result.output
    assert "run `imgov schemas register`" in result.output
    result = runner.invoke(schemas_app, ["register", *options])
    assert result.exit_code == 1 and "not BACKWARD compatible" in result.output


def test_register_then_check_a_compatible_change(tmp_path: Path) -> None:
    options = _copy(tmp_path)
    path = tmp_path / "avro" / "AlertEvent.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["fields"].append({"name": "ward", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema), encoding="utf-8")
    assert runner.invoke(schemas_app, ["check", *options]).exit_code == 1
    result = runner.invoke(schemas_app, ["register", *options])
    assert result.exit_code == 0 and "imgov.events.v1.AlertEvent version 2" in result.output
    result = runner.invoke(schemas_app, ["check", *options])
    assert result.exit_code == 0 and f"{_versions() + 1} registered versions" in result.output
    result = runner.invoke(schemas_app, ["register", *options])
    assert "nothing to register" in result.output


def test_a_broken_avsc_is_reported(tmp_path: Path) -> None:
    options = _copy(tmp_path)
    (tmp_path / "avro" / "Breach.avsc").write_text("{not json", encoding="utf-8")
    result = runner.invoke(schemas_app, ["check", *options])
    assert result.exit_code == 2 and "Breach.avsc: not a valid Avro schema" in result.output
