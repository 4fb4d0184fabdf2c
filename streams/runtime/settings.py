"""Runtime settings, from ``IMGOV_*`` environment variables and an optional TOML file.

Only ``streams/runtime`` and the CLI read settings; the pure core receives plain values.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["REPO_ROOT", "STATE_DIR", "ClickHouseSettings", "KafkaSettings"]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout (an editable install); infra files are found relative to it."""

STATE_DIR = Path(".imgov")
"""Where the demo, the services and the benchmarks keep their files (git-ignored)."""


class KafkaSettings(BaseSettings):
    """How to reach Kafka (``IMGOV_KAFKA_BOOTSTRAP``)."""

    model_config = SettingsConfigDict(env_prefix="IMGOV_KAFKA_", extra="ignore")

    bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port...]")


class ClickHouseSettings(BaseSettings):
    """How to reach the ClickHouse server (``IMGOV_CLICKHOUSE_*``)."""

    model_config = SettingsConfigDict(env_prefix="IMGOV_CLICKHOUSE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 19000
    user: str = "imgov"
    password: SecretStr = SecretStr("imgov")
    database: str = "imgov"
