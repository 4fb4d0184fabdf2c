"""How to reach the ClickHouse server, from ``IMGOV_CLICKHOUSE_*`` environment variables."""

from __future__ import annotations

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
