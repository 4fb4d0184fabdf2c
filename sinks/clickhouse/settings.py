"""How to reach the ClickHouse server, from ``IMGOV_CLICKHOUSE_*`` environment variables."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ClickHouseSettings"]


class ClickHouseSettings(BaseSettings):
    """How to reach the ClickHouse server (``IMGOV_CLICKHOUSE_*``).

    The password comes from ``IMGOV_CLICKHOUSE_PASSWORD_FILE`` (read once, when the
    settings load; a trailing newline is dropped) or ``IMGOV_CLICKHOUSE_PASSWORD``, never
    from a command-line option. Every command that reads the audit tables (``imgov
    status``, ``audit``, ``report``, ``kpi``, ``db``) and the worker's writer use these
    settings, so the same two variables serve the writer and the compliance user.

    TLS (``IMGOV_CLICKHOUSE_SECURE``, ``_CA_CERTS``, ``_VERIFY``, ``_CERTFILE``,
    ``_KEYFILE``; docs/deploy.md section 5): the files are read and parsed when the
    settings load, so a wrong one stops a command at start, named; :meth:`tls_options`
    gives clickhouse-driver's arguments.
    """

    # An empty variable means unset (IMGOV_CLICKHOUSE_PASSWORD_FILE= is not ".").
    model_config = SettingsConfigDict(
        env_prefix="IMGOV_CLICKHOUSE_", extra="ignore", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    port: int = 19000
    user: str = "imgov"
    password: SecretStr = SecretStr("imgov")
    password_file: Path | None = None
    database: str = "imgov"
    alt_hosts: str | None = None
    """Other replicas, ``host:port,host:port`` (``IMGOV_CLICKHOUSE_ALT_HOSTS``), passed to
    clickhouse-driver's ``alt_hosts``: when the server of ``host``/``port`` is down the
    client connects to the next one that answers, and stays there. Cluster mode."""
    cluster: str | None = None
    """The ``remote_servers`` cluster of a replicated layout (``IMGOV_CLICKHOUSE_CLUSTER``):
    the default of ``imgov db migrate --cluster``. Unset: one server (the default)."""
    secure: bool = False
    """TLS on the native protocol (``IMGOV_CLICKHOUSE_SECURE``): ``port`` is then the
    server's ``tcp_port_secure`` (9440 by convention), and every replica of ``alt_hosts``
    must serve TLS on its port too."""
    ca_certs: Path | None = None
    """PEM file of the CA(s) that sign the server certificates
    (``IMGOV_CLICKHOUSE_CA_CERTS``). Unset: the system's CAs (``SSL_CERT_FILE`` or
    OpenSSL's default bundle). Needs ``secure``."""
    verify: bool = True
    """Verify the server's certificate and host name (``IMGOV_CLICKHOUSE_VERIFY``).
    ``false`` encrypts without authenticating the server: for a test bench only."""
    certfile: Path | None = None
    """PEM client certificate for mutual TLS (``IMGOV_CLICKHOUSE_CERTFILE``); may hold
    the key too. Needs ``secure``."""
    keyfile: Path | None = None
    """Its unencrypted PEM private key (``IMGOV_CLICKHOUSE_KEYFILE``). Needs ``certfile``."""

    @model_validator(mode="after")
    def _password_from_file(self) -> ClickHouseSettings:
        if self.password_file is None:
            return self
        try:
            text = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"IMGOV_CLICKHOUSE_PASSWORD_FILE: cannot read {self.password_file}: {exc}"
            ) from exc
        # Settings validated again from their own dump carry both, equal: not a conflict.
        if "password" in self.model_fields_set and self.password.get_secret_value() != text:
            raise ValueError(
                "set IMGOV_CLICKHOUSE_PASSWORD or IMGOV_CLICKHOUSE_PASSWORD_FILE, not both"
            )
        self.password = SecretStr(text)
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> ClickHouseSettings:
        files = {"CA_CERTS": self.ca_certs, "CERTFILE": self.certfile, "KEYFILE": self.keyfile}
        given = [name for name, path in files.items() if path is not None]
        if given and not self.secure:
            # Otherwise the files would be ignored and the client would talk plaintext.
            raise ValueError(
                f"IMGOV_CLICKHOUSE_{given[0]} is set but IMGOV_CLICKHOUSE_SECURE is not true"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("IMGOV_CLICKHOUSE_KEYFILE needs IMGOV_CLICKHOUSE_CERTFILE")
        for name in given:
            path = files[name]
            try:
                path.read_bytes()  # type: ignore[union-attr]
            except OSError as exc:
                raise ValueError(f"IMGOV_CLICKHOUSE_{name}: cannot read {path}: {exc}") from exc
        # Loaded as the driver will load them, so that a wrong file fails here, named.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_certs is not None:
            try:
                context.load_verify_locations(cafile=self.ca_certs)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"IMGOV_CLICKHOUSE_CA_CERTS: no PEM certificate in {self.ca_certs}: {exc}"
                ) from exc
        if self.certfile is not None:
            try:
                context.load_cert_chain(self.certfile, self.keyfile, password=_no_passphrase)
            except (ssl.SSLError, _EncryptedKeyError) as exc:
                names = "IMGOV_CLICKHOUSE_CERTFILE" + (
                    "/IMGOV_CLICKHOUSE_KEYFILE" if self.keyfile is not None else ""
                )
                raise ValueError(
                    f"{names}: not a PEM certificate and its unencrypted private key "
                    f"({self.certfile}{', ' + str(self.keyfile) if self.keyfile else ''}): {exc}"
                ) from exc
        return self

    def tls_options(self) -> dict[str, object]:
        """clickhouse-driver ``Client`` keyword arguments for TLS (empty when not ``secure``)."""
        if not self.secure:
            return {}
        options: dict[str, object] = {"secure": True, "verify": self.verify}
        # The driver's own default is certifi's bundle, not the system's: pass the latter.
        ca_certs = self.ca_certs or ssl.get_default_verify_paths().cafile
        if ca_certs is not None:
            options["ca_certs"] = str(ca_certs)
        if self.certfile is not None:
            options["certfile"] = str(self.certfile)
        if self.keyfile is not None:
            options["keyfile"] = str(self.keyfile)
        return options


class _EncryptedKeyError(Exception):
    """The private key asks for a passphrase, which imgov has no setting for."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal.
    raise _EncryptedKeyError("the private key is encrypted; give an unencrypted key")
