"""How to reach the ClickHouse server, from ``IMGOV_CLICKHOUSE_*`` environment variables."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ClickHouseSettings"]


class ClickHouseSettings(BaseSettings):
    """How to reach the ClickHouse server (``IMGOV_CLICKHOUSE_*``)."""

    model_config = SettingsConfigDict(env_prefix="IMGOV_CLICKHOUSE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 19000
    user: str = "imgov"
    password: SecretStr = SecretStr("imgov")
    database: str = "imgov"
