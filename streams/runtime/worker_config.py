"""Settings of the live worker (``imgov worker``), and the topic names it uses.

Settings come from ``IMGOV_WORKER_*`` environment variables, then an optional TOML file
(``[worker]`` table, same names without the prefix); Kafka and ClickHouse are reached
through ``IMGOV_KAFKA_*`` / ``IMGOV_CLICKHOUSE_*`` (``streams.runtime.settings``), and the
governance core through ``IMGOV_*`` (``streams.runtime.governance``). Every value is
validated on start; a bad one stops the worker with a message naming the setting.

Topic names are the constants of ``streams.runtime.topics``, optionally behind a
``topic_namespace`` prefix (tests and side-by-side deployments use one; production
leaves it empty).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ImgovError
from streams.runtime.settings import STATE_DIR
from streams.runtime.topics import (
    ALERT_TOPIC,
    BREACH_TOPIC,
    DLQ_TOPIC,
    INFERENCE_TOPIC,
    KPI_TOPIC,
    LINEAGE_TOPIC,
    REPORT_TOPIC,
    REVIEW_TOPIC,
)

__all__ = [
    "CONTRIBUTIONS_TOPIC",
    "WorkerConfigError",
    "WorkerSettings",
    "WorkerTopics",
    "load_worker_settings",
]

CONTRIBUTIONS_TOPIC = "imgov.internal.kpi-contributions.v1"
"""Internal: lineage revisions repartitioned by KPI dimensions (algorithm, finding)."""


class WorkerConfigError(ImgovError):
    """The worker's settings are missing or invalid; the message names the setting."""


class WorkerSettings(BaseSettings):
    """What an operator may set for the live worker.

    Attributes:
        app_id: Faust application id = consumer group = prefix of the state topics
            (role ``kpi`` uses ``<app_id>-kpi``, see ``group_id``).
        role: which stages this worker runs: ``all`` (both, the default), or
            ``lineage`` / ``kpi`` to run them as separate processes that scale, and
            use a core, each. A deployment picks one layout: the KPI state of ``all``
            and of ``kpi`` workers lives under different group ids.
        topic_namespace: prefix of every topic name ('' in production).
        datadir: where RocksDB keeps the state tables (in a folder per ``group_id``).
        store: ``rocksdb`` (durable, the default) or ``memory`` (state only in the
            changelog; restored in full on every start).
        partitions: partition count of the input topics (state topics get the same).
        batch_size: most input messages processed (and committed) as one batch.
        batch_within_s: longest wait to fill a batch.
        idle_close_s: after this long without input, and once the whole consumer group
            has committed every input offset, every KPI window is closed (made final).
        source_idle_s: an input topic-partition that is caught up and delivered
            nothing for this long is idle: left out of its partition's watermark (so an
            empty partition does not stall the KPI windows) until its next message.
        align_skew_ms: input topic-partitions whose watermark runs more than this
            (event time) ahead of the slowest are paused until it catches up, so that
            a backlog is read in roughly event-time order.
        commit_interval_s: how often Faust commits the offsets of finished batches.
        current_interval_s: how often current (not yet final) KPI values are published,
            in processing time; final values are published as windows close.
        checkpoint_interval_s: how often the KPI state (window snapshots) is written
            and the contributions processed since are committed; a crash recomputes at
            most this much.
        web_enabled: run Faust's web server (bound to ``web_host`` only).
        web_host: the web server's address; only loopback is allowed.
        web_port: the web server's port.
        create_topics: create missing topics on start (idempotent).
        log_level: Faust's log level.
    """

    model_config = SettingsConfigDict(env_prefix="IMGOV_WORKER_", extra="ignore")

    app_id: str = Field("imgov-governance", pattern=r"^[a-zA-Z0-9._-]{1,200}$")
    role: Literal["all", "lineage", "kpi"] = "all"
    topic_namespace: str = Field("", pattern=r"^[a-zA-Z0-9._-]{0,100}$")
    datadir: Path = STATE_DIR / "worker"
    store: Literal["rocksdb", "memory"] = "rocksdb"
    partitions: int = Field(6, ge=1, le=1024)
    batch_size: int = Field(2_000, ge=1, le=100_000)
    batch_within_s: float = Field(0.2, gt=0, le=60)
    idle_close_s: float = Field(60.0, gt=0)
    source_idle_s: float = Field(10.0, gt=0)
    align_skew_ms: int = Field(2 * 3_600_000, ge=0)
    commit_interval_s: float = Field(1.0, gt=0, le=60)
    current_interval_s: float = Field(10.0, gt=0, le=3600)
    checkpoint_interval_s: float = Field(5.0, gt=0, le=300)
    web_enabled: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    create_topics: bool = True
    log_level: Literal["debug", "info", "warn", "warning", "error", "critical"] = "warn"

    @property
    def group_id(self) -> str:
        """The Faust app id (consumer group, state topic prefix) of this worker's role."""
        return f"{self.app_id}-kpi" if self.role == "kpi" else self.app_id

    @field_validator("web_host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if value not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"web_host must be a loopback address (127.0.0.1), not {value!r}")
        return value


class _FileWorker(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_id: str | None = None
    role: str | None = None
    topic_namespace: str | None = None
    datadir: Path | None = None
    store: str | None = None
    partitions: int | None = None
    batch_size: int | None = None
    batch_within_s: float | None = None
    idle_close_s: float | None = None
    source_idle_s: float | None = None
    align_skew_ms: int | None = None
    commit_interval_s: float | None = None
    current_interval_s: float | None = None
    checkpoint_interval_s: float | None = None
    web_enabled: bool | None = None
    web_host: str | None = None
    web_port: int | None = None
    create_topics: bool | None = None
    log_level: str | None = None


def load_worker_settings(config_file: Path | None = None) -> WorkerSettings:
    """Returns the worker settings: environment, overridden by ``[worker]`` of the file.

    Raises:
        WorkerConfigError: unreadable file, unknown key or invalid value (named).
    """
    try:
        settings = WorkerSettings()
        if config_file is None:
            return settings
        with config_file.open("rb") as handle:
            raw: dict[str, Any] = tomllib.load(handle).get("worker", {})
        update = _FileWorker.model_validate(raw).model_dump(exclude_none=True)
        if "datadir" in update and not Path(update["datadir"]).is_absolute():
            update["datadir"] = config_file.parent / update["datadir"]
        return WorkerSettings.model_validate({**settings.model_dump(), **update})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkerConfigError(f"cannot read worker settings {config_file}: {exc}") from exc
    except ValidationError as exc:
        where = config_file or "environment (IMGOV_WORKER_*)"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<worker>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise WorkerConfigError(f"invalid worker settings in {where}: {problems}") from exc


@dataclass(frozen=True, slots=True)
class WorkerTopics:
    """Every topic the worker reads or writes, with the namespace applied."""

    inference: str
    alert: str
    report: str
    lineage: str
    kpi: str
    breach: str
    review: str
    dlq: str
    contributions: str

    @classmethod
    def with_namespace(cls, namespace: str = "") -> WorkerTopics:
        """Returns the topic names behind ``namespace`` (a plain prefix)."""
        n = namespace
        return cls(
            inference=n + INFERENCE_TOPIC,
            alert=n + ALERT_TOPIC,
            report=n + REPORT_TOPIC,
            lineage=n + LINEAGE_TOPIC,
            kpi=n + KPI_TOPIC,
            breach=n + BREACH_TOPIC,
            review=n + REVIEW_TOPIC,
            dlq=n + DLQ_TOPIC,
            contributions=n + CONTRIBUTIONS_TOPIC,
        )

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.inference, self.alert, self.report)

    def original(self, topic: str) -> str:
        """The un-namespaced name of ``topic`` (for specs in topics.toml)."""
        for name in (
            INFERENCE_TOPIC,
            ALERT_TOPIC,
            REPORT_TOPIC,
            LINEAGE_TOPIC,
            KPI_TOPIC,
            BREACH_TOPIC,
            REVIEW_TOPIC,
            DLQ_TOPIC,
            CONTRIBUTIONS_TOPIC,
        ):
            if topic.endswith(name):
                return name
        return topic
