"""Kafka security settings (``IMGOV_KAFKA_*``): combinations, files, messages, secrecy.

No broker: what is checked is what ``load_kafka_settings`` accepts, what it refuses (with
the variable named), and that secrets come from the environment or files only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main

from streams.cli.main import app
from streams.runtime.settings import KafkaConfigError, KafkaSettings, load_kafka_settings


@pytest.fixture(autouse=True)
def _no_kafka_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(KafkaSettings.model_fields):
        monkeypatch.delenv(f"IMGOV_KAFKA_{name.upper()}", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate whose key is encrypted with passphrase ``kp``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    where = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    run("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    run("req", *ec, "-passout", "pass:kp", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=client")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "1")  # fmt: skip
    return where


def _secret_file(tmp_path: Path, text: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def _refused(**given: object) -> str:
    with pytest.raises(KafkaConfigError) as refused:
        load_kafka_settings(**given)
    return str(refused.value)


def test_default_is_plaintext_with_no_security_arguments() -> None:
    security = load_kafka_settings().security()
    assert security.protocol == "PLAINTEXT"
    assert security.client_options() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None
    assert security.librdkafka_config() == {"security.protocol": "plaintext"}


def test_sasl_ssl_from_the_environment_with_a_password_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Path
) -> None:
    password = _secret_file(tmp_path, "s3cret\n")
    monkeypatch.setenv("IMGOV_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")  # any case
    monkeypatch.setenv("IMGOV_KAFKA_SSL_CAFILE", str(pki / "ca.pem"))
    monkeypatch.setenv("IMGOV_KAFKA_SASL_USERNAME", "imgov")
    monkeypatch.setenv("IMGOV_KAFKA_SASL_PASSWORD_FILE", str(password))
    security = load_kafka_settings().security()
    assert security.protocol == "SASL_SSL"
    assert security.mechanism == "SCRAM-SHA-512"  # the default
    assert security.username == "imgov"
    assert security.password is not None
    assert security.password.get_secret_value() == "s3cret"  # trailing newline dropped
    assert security.cafile == pki / "ca.pem"


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_KAFKA_SASL_PASSWORD", "from-env")
    settings = load_kafka_settings(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_mechanism="plain"
    )
    assert settings.security().client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "from-env",
    }


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_KAFKA_SSL_CAFILE", "")
    assert load_kafka_settings().ssl_cafile is None


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"security_protocol": "SASL_SSL"}, "IMGOV_KAFKA_SASL_USERNAME"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "IMGOV_KAFKA_SASL_PASSWORD"),
        ({"security_protocol": "TLS"}, "IMGOV_KAFKA_SECURITY_PROTOCOL"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "SASL_MECHANISM"),
        ({"sasl_username": "u"}, "IMGOV_KAFKA_SASL_USERNAME is set but"),
        ({"ssl_cafile": "/etc/hostname"}, "IMGOV_KAFKA_SSL_CAFILE is set but"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/x.key"}, "without IMGOV_KAFKA_SSL_CERTFILE"),
    ],
)
def test_invalid_combinations_name_the_variable(given: dict[str, str], named: str) -> None:
    assert named in _refused(**given)


def test_missing_files_are_named_with_their_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = _refused(security_protocol="SSL", ssl_cafile=str(missing))
    assert "IMGOV_KAFKA_SSL_CAFILE" in message and str(missing) in message
    message = _refused(
        security_protocol="SASL_SSL", sasl_username="u", sasl_password_file=str(missing)
    )
    assert "IMGOV_KAFKA_SASL_PASSWORD_FILE" in message and "does not exist" in message


def test_an_unreadable_or_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = _secret_file(tmp_path, "\n")
    message = _refused(security_protocol="SASL_SSL", sasl_username="u", sasl_password_file=empty)
    assert "IMGOV_KAFKA_SASL_PASSWORD_FILE" in message and "empty" in message


def test_a_ca_file_that_is_not_a_certificate_is_refused(tmp_path: Path) -> None:
    not_pem = _secret_file(tmp_path, "hello\n", "ca.pem")
    message = _refused(security_protocol="SSL", ssl_cafile=not_pem)
    assert "IMGOV_KAFKA_SSL_CAFILE" in message and "no usable PEM CA certificate" in message


def test_password_in_both_places_is_refused(tmp_path: Path) -> None:
    message = _refused(
        security_protocol="SASL_SSL",
        sasl_username="u",
        sasl_password="a",
        sasl_password_file=_secret_file(tmp_path, "b"),
    )
    assert "not both" in message


def test_client_certificate_with_an_encrypted_key(tmp_path: Path, pki: Path) -> None:
    common = {
        "security_protocol": "SSL",
        "ssl_cafile": pki / "ca.pem",
        "ssl_certfile": pki / "client.pem",
        "ssl_keyfile": pki / "client.key",
    }
    security = load_kafka_settings(
        **common, ssl_key_password_file=_secret_file(tmp_path, "kp\n")
    ).security()
    assert security.key_password is not None
    assert security.librdkafka_config()["ssl.key.password"] == "kp"

    message = _refused(**common, ssl_key_password_file=_secret_file(tmp_path, "bad", "bad"))
    assert "IMGOV_KAFKA_SSL_CERTFILE" in message and "passphrase" in message


def test_secrets_never_show_in_reprs_or_errors(tmp_path: Path) -> None:
    settings = load_kafka_settings(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="hunter2"
    )
    for text in (repr(settings), str(settings), repr(settings.security())):
        assert "hunter2" not in text
    assert "hunter2" not in settings.security().describe()
    message = _refused(security_protocol="SASL_SSL", sasl_password="hunter2")
    assert "hunter2" not in message


def test_no_command_line_option_takes_a_secret() -> None:
    """Secrets on a command line show in ``ps``: no option may carry one."""
    command = typer.main.get_command(app)
    found, seen = [], set()

    def walk(cmd: object, path: str) -> None:
        for param in getattr(cmd, "params", ()):
            seen.add(param.name)
            if any(word in param.name for word in ("password", "secret", "sasl", "key")):
                found.append(f"{path} --{param.name}")
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(command, "imgov")
    assert "bootstrap" in seen, "the walk must reach the commands' options"
    assert not found, f"options that take secrets: {found}"
