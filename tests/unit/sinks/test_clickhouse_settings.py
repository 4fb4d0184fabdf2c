"""ClickHouse settings: the password from ``IMGOV_CLICKHOUSE_PASSWORD_FILE`` or the env, and TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from sinks.clickhouse.settings import ClickHouseSettings
from tests.tls_certs import TestCA


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


# --- TLS: IMGOV_CLICKHOUSE_SECURE, _CA_CERTS, _VERIFY, _CERTFILE, _KEYFILE ---------------


def test_tls_is_off_by_default_and_passes_nothing_to_the_driver() -> None:
    settings = ClickHouseSettings()
    assert settings.secure is False and settings.verify is True
    assert settings.tls_options() == {}


def test_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("writer", server=False)
    monkeypatch.setenv("IMGOV_CLICKHOUSE_SECURE", "true")
    monkeypatch.setenv("IMGOV_CLICKHOUSE_CA_CERTS", str(ca.cert))
    monkeypatch.setenv("IMGOV_CLICKHOUSE_CERTFILE", str(client.cert))
    monkeypatch.setenv("IMGOV_CLICKHOUSE_KEYFILE", str(client.key))
    assert ClickHouseSettings().tls_options() == {
        "secure": True,
        "verify": True,
        "ca_certs": str(ca.cert),
        "certfile": str(client.cert),
        "keyfile": str(client.key),
    }


def test_without_a_ca_the_system_cas_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not the driver's default (certifi's bundle): a CA installed on the host is trusted.
    system = ssl.get_default_verify_paths().cafile
    monkeypatch.setenv("IMGOV_CLICKHOUSE_SECURE", "1")
    monkeypatch.setenv("IMGOV_CLICKHOUSE_VERIFY", "false")
    options = ClickHouseSettings().tls_options()
    assert options["secure"] is True and options["verify"] is False
    assert options.get("ca_certs") == system


@pytest.mark.parametrize("variable", ["CA_CERTS", "CERTFILE", "KEYFILE"])
def test_an_unreadable_tls_file_is_named(
    variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("writer", server=False)
    monkeypatch.setenv("IMGOV_CLICKHOUSE_SECURE", "true")
    monkeypatch.setenv("IMGOV_CLICKHOUSE_CA_CERTS", str(ca.cert))
    monkeypatch.setenv("IMGOV_CLICKHOUSE_CERTFILE", str(client.cert))
    monkeypatch.setenv("IMGOV_CLICKHOUSE_KEYFILE", str(client.key))
    missing = tmp_path / "nowhere.pem"
    monkeypatch.setenv(f"IMGOV_CLICKHOUSE_{variable}", str(missing))
    with pytest.raises(ValidationError, match=f"IMGOV_CLICKHOUSE_{variable}: cannot read"):
        ClickHouseSettings()
    # A folder is not a file either.
    monkeypatch.setenv(f"IMGOV_CLICKHOUSE_{variable}", str(tmp_path))
    with pytest.raises(ValidationError, match=f"IMGOV_CLICKHOUSE_{variable}: cannot read"):
        ClickHouseSettings()


def test_a_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("writer", server=False)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValidationError, match="IMGOV_CLICKHOUSE_CA_CERTS: no PEM certificate"):
        ClickHouseSettings(secure=True, ca_certs=junk)
    with pytest.raises(ValidationError, match="IMGOV_CLICKHOUSE_CERTFILE/IMGOV_CLICKHOUSE_KEYFILE"):
        ClickHouseSettings(secure=True, certfile=client.cert, keyfile=junk)
    # The key of another certificate does not match.
    other = ca.issue("other", server=False)
    with pytest.raises(ValidationError, match="IMGOV_CLICKHOUSE_CERTFILE"):
        ClickHouseSettings(secure=True, certfile=client.cert, keyfile=other.key)


def test_a_certfile_holding_its_key_needs_no_keyfile(tmp_path: Path) -> None:
    client = TestCA(tmp_path).issue("writer", server=False)
    both = tmp_path / "both.pem"
    both.write_bytes(client.cert.read_bytes() + client.key.read_bytes())
    options = ClickHouseSettings(secure=True, certfile=both).tls_options()
    assert options["certfile"] == str(both) and "keyfile" not in options


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    client = TestCA(tmp_path).issue("writer", server=False)
    key = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValidationError, match="private key is encrypted"):
        ClickHouseSettings(secure=True, certfile=client.cert, keyfile=encrypted)


@pytest.mark.parametrize("field", ["ca_certs", "certfile"])
def test_tls_files_without_secure_are_refused(field: str, tmp_path: Path) -> None:
    # Otherwise the client would silently talk plaintext to a port that expects TLS.
    ca = TestCA(tmp_path)
    with pytest.raises(
        ValidationError,
        match=f"IMGOV_CLICKHOUSE_{field.upper()} is set but IMGOV_CLICKHOUSE_SECURE is not true",
    ):
        ClickHouseSettings.model_validate({field: ca.cert})


def test_a_keyfile_needs_a_certfile(tmp_path: Path) -> None:
    client = TestCA(tmp_path).issue("writer", server=False)
    with pytest.raises(ValidationError, match="IMGOV_CLICKHOUSE_KEYFILE needs"):
        ClickHouseSettings(secure=True, keyfile=client.key)


def test_a_wrong_boolean_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_CLICKHOUSE_SECURE", "maybe")
    with pytest.raises(ValidationError, match="secure"):
        ClickHouseSettings()


def test_tls_settings_survive_a_copy_for_another_host(tmp_path: Path) -> None:
    # The sharded migration connects to every shard with a copy of the settings.
    ca = TestCA(tmp_path)
    settings = ClickHouseSettings(secure=True, ca_certs=ca.cert)
    node = settings.model_copy(update={"host": "ch2", "port": 9440, "alt_hosts": None})
    assert node.tls_options() == settings.tls_options()
