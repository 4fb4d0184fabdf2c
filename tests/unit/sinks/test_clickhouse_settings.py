"""ClickHouse settings: the password from ``IMGOV_CLICKHOUSE_PASSWORD_FILE`` or the env."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sinks.clickhouse.settings import ClickHouseSettings


@pytest.fixture(autouse=True)
def _no_clickhouse_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ClickHouseSettings.model_fields:
        monkeypatch.delenv(f"IMGOV_CLICKHOUSE_{name.upper()}", raising=False)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clickhouse.password"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_password_file_from_the_environment_loses_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMGOV_CLICKHOUSE_USER", "compliance")
    monkeypatch.setenv("IMGOV_CLICKHOUSE_PASSWORD_FILE", str(_file(tmp_path, "s3 cret\n")))
    settings = ClickHouseSettings()
    assert settings.user == "compliance"
    assert settings.password.get_secret_value() == "s3 cret"
    assert "s3 cret" not in repr(settings)


def test_password_from_the_environment_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ClickHouseSettings().password.get_secret_value() == "imgov"
    monkeypatch.setenv("IMGOV_CLICKHOUSE_PASSWORD", "from-env")
    assert ClickHouseSettings().password.get_secret_value() == "from-env"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValidationError, match="IMGOV_CLICKHOUSE_PASSWORD_FILE: cannot read"):
        ClickHouseSettings(password_file=missing)


def test_two_different_passwords_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not both"):
        ClickHouseSettings(password="a", password_file=_file(tmp_path, "b\n"))


def test_settings_validated_again_from_their_dump_keep_the_file_password(tmp_path: Path) -> None:
    settings = ClickHouseSettings(password_file=_file(tmp_path, "b\n"), database="x")
    dumped = {**settings.model_dump(), "password": settings.password.get_secret_value()}
    again = ClickHouseSettings.model_validate(dumped)
    assert again.password.get_secret_value() == "b" and again.database == "x"


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_CLICKHOUSE_PASSWORD_FILE", "")
    assert ClickHouseSettings().password.get_secret_value() == "imgov"
