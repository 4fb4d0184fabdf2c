"""Settings of the live worker (``imgov worker``) and of its Kafka connection.

Worker settings come from ``IMGOV_WORKER_*`` environment variables, then an optional TOML
file (``[worker]`` table, same names without the prefix); Kafka is reached through
``IMGOV_KAFKA_*``, ClickHouse through ``IMGOV_CLICKHOUSE_*``
(``sinks.clickhouse.settings``), and the governance core through ``IMGOV_*``
(``streams.governance``). Every value is validated on start; a bad one stops the worker
with a message naming the setting. Topic names are the constants of ``streams.topics``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ImgovError
from streams.kafka_security import (
    KafkaSecurity,
    SaslMechanism,
    SecurityProtocol,
    read_secret_file,
)
from streams.paths import STATE_DIR
from streams.topics import DEFAULT_APP_ID, KPI_GROUP_SUFFIX

__all__ = [
    "KafkaConfigError",
    "KafkaSettings",
    "WorkerConfigError",
    "WorkerSettings",
    "load_kafka_settings",
    "load_worker_settings",
]

_TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_file")
_SASL_VALUES = ("sasl_username", "sasl_password", "sasl_password_file")


class KafkaSettings(BaseSettings):
    """How to reach Kafka, and how to authenticate and encrypt (``IMGOV_KAFKA_*``).

    Secrets come from files (``*_file``) or the environment, never from the command
    line (where ``ps`` shows them). Every file is read, and the TLS context built once,
    when the settings load: a wrong path, an unreadable CA or a missing password stops
    the command at start with a message naming the variable.

    Attributes:
        bootstrap: ``host:port[,host:port...]``.
        security_protocol: ``PLAINTEXT`` (the default), ``SSL``, ``SASL_SSL``, or
            ``SASL_PLAINTEXT`` (credentials in clear text: a trusted network only).
        ssl_cafile: PEM CA the broker certificates chain to (default: system CAs).
        ssl_certfile: PEM client certificate, for brokers that require mutual TLS.
        ssl_keyfile: PEM key of ``ssl_certfile`` (unset: the key is in the certificate file).
        ssl_key_password_file: file holding the key's passphrase (or ``ssl_key_password``).
        ssl_check_hostname: check that the broker certificate names the broker's host.
        sasl_mechanism: ``SCRAM-SHA-512`` (the default), ``SCRAM-SHA-256`` or ``PLAIN``.
        sasl_username: the SASL user.
        sasl_password_file: file holding the SASL password (mode 600 recommended).
        sasl_password: the SASL password itself, from the environment only.
        replication_factor: replication factor of every topic imgov creates (the
            pipeline's topics, the worker's contributions topic, Faust's changelogs);
            unset: the values of ``infra/kafka/topics.toml`` (1, a single broker).
            A cluster uses 3.
        min_insync_replicas: ``min.insync.replicas`` set on every topic imgov creates:
            how many replicas must have a write before an ``acks=all`` producer is told
            it is stored (a cluster uses 2, so one broker may die without losing an
            acknowledged event); unset: the topics file's configs, else the broker
            default. At most ``replication_factor``.
    """

    # An empty variable (IMGOV_KAFKA_SSL_CAFILE=) means unset, not the current directory.
    model_config = SettingsConfigDict(
        env_prefix="IMGOV_KAFKA_", extra="ignore", env_ignore_empty=True
    )

    bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port...]")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password_file: Path | None = None
    sasl_password: SecretStr | None = None
    replication_factor: int | None = Field(None, ge=1, le=32)
    min_insync_replicas: int | None = Field(None, ge=1, le=32)

    _security: KafkaSecurity = PrivateAttr(default_factory=KafkaSecurity)

    def security(self) -> KafkaSecurity:
        """Returns the resolved security settings (secrets read from their files)."""
        return self._security

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _min_insync_within_replication(self) -> KafkaSettings:
        rf, min_isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and min_isr is not None and min_isr > rf:
            # Every acks=all write would fail with NOT_ENOUGH_REPLICAS, forever.
            raise ValueError(
                f"{_env('min_insync_replicas')} ({min_isr}) must be at most"
                f" {_env('replication_factor')} ({rf})"
            )
        return self

    @model_validator(mode="after")
    def _resolve_security(self) -> KafkaSettings:
        protocol = self.security_protocol
        tls, sasl = protocol in ("SSL", "SASL_SSL"), protocol in ("SASL_SSL", "SASL_PLAINTEXT")
        for name in _TLS_FILES if not tls else ():
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{_env(name)} is set but {_env('security_protocol')} is {protocol}:"
                    " use SSL or SASL_SSL, or unset it"
                )
        for name in _SASL_VALUES if not sasl else ():
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{_env(name)} is set but {_env('security_protocol')} is {protocol}:"
                    " use SASL_SSL, or unset it"
                )
        if self.ssl_certfile is None:
            for name in ("ssl_keyfile", "ssl_key_password_file", "ssl_key_password"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{_env(name)} is set without {_env('ssl_certfile')}")
        for name in (*_TLS_FILES, "sasl_password_file"):
            _check_readable(name, getattr(self, name))
        key_password = _secret(
            "ssl_key_password", self.ssl_key_password, self.ssl_key_password_file
        )
        password = _secret("sasl_password", self.sasl_password, self.sasl_password_file)
        if sasl and (not self.sasl_username or password is None):
            raise ValueError(
                f"{_env('security_protocol')}={protocol} needs {_env('sasl_username')} and a"
                f" password ({_env('sasl_password_file')} or {_env('sasl_password')})"
            )
        self._security = KafkaSecurity(
            protocol=protocol,
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            key_password=key_password,
            check_hostname=self.ssl_check_hostname,
            mechanism=self.sasl_mechanism,
            username=self.sasl_username if sasl else None,
            password=password if sasl else None,
        )
        if tls:
            _check_tls(self._security)
        return self


class KafkaConfigError(ImgovError):
    """The Kafka settings (``IMGOV_KAFKA_*``) are invalid; the message names the variable."""


def load_kafka_settings(**overrides: Any) -> KafkaSettings:
    """Returns the Kafka settings of the environment, with ``overrides`` (e.g. a
    ``--bootstrap`` option) applied, validated as a whole.

    Raises:
        KafkaConfigError: a value, a combination or a file is invalid (named).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return KafkaSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            (f"{_env(str(err['loc'][0]))}: " if err["loc"] else "")
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise KafkaConfigError(f"invalid Kafka settings: {problems}") from exc


def _env(name: str) -> str:
    return f"IMGOV_KAFKA_{name.upper()}"


def _check_readable(name: str, path: Path | None) -> None:
    if path is None:
        return
    if not path.is_file():
        raise ValueError(f"{_env(name)}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{_env(name)}: {path} is not readable by this user")


def _secret(name: str, value: SecretStr | None, file: Path | None) -> SecretStr | None:
    if value is not None and file is not None:
        raise ValueError(f"set {_env(name)} or {_env(name + '_file')}, not both")
    if file is None:
        return value
    try:
        return read_secret_file(file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{_env(name + '_file')}: cannot read a secret: {exc}") from exc


def _check_tls(security: KafkaSecurity) -> None:
    """Builds the TLS context once, so that a bad CA, certificate or key fails at start."""
    if security.cafile is not None:
        try:
            ssl.create_default_context(cafile=str(security.cafile))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"{_env('ssl_cafile')}: {security.cafile} holds no usable PEM CA certificate"
                f" ({exc})"
            ) from exc
    try:
        security.ssl_context()
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"{_env('ssl_certfile')}/{_env('ssl_keyfile')}: cannot load the client certificate"
            f" {security.certfile} with its key (wrong file, key or passphrase?): {exc}"
        ) from exc


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
        instance_id: the worker's static group membership (Kafka ``group.instance.id``):
            ``auto`` (the default) derives it from the host name and the state
            directory, which stay the same when the same worker restarts; ``none``
            uses dynamic membership; anything else is used as given (unique per
            worker of a group). A static member killed and restarted within
            ``session_timeout_s`` gets its own partitions back without a rebalance.
        session_timeout_s: how long the group waits for a silent worker before its
            partitions go to the others (a crash stalls them at most this long).
        heartbeat_interval_s: how often the worker tells the group it is alive.
        max_poll_interval_s: the longest pause between two fetches before the group
            takes the partitions away.
        shutdown_timeout_s: the bound on a graceful stop (SIGTERM or SIGINT): stop
            fetching, finish the batch, checkpoint, commit, leave the group; past
            it, the worker exits at once (what it did not commit is read again).
        leave_group_on_stop: on a graceful stop a static member leaves the group,
            so its partitions move at once (false: they wait ``session_timeout_s``
            for the same worker to come back, as for a rolling restart).
        current_interval_s: how often current (not yet final) KPI values are published,
            in processing time; final values are published as windows close.
        checkpoint_interval_s: how often the KPI state (window snapshots) is written
            and the contributions processed since are committed; a crash recomputes at
            most this much.
        audit_checkpoint_interval_s: how often (processing time) the lineage stage
            writes a signed audit checkpoint of its chain heads per input partition
            (``streams.runtime.anchor``); one is also written when the worker stops.
        web_enabled: run Faust's web server (bound to ``web_host`` only).
        web_host: the web server's address; only loopback is allowed.
        web_port: the web server's port.
        metrics_enabled: serve Prometheus metrics (``streams.metrics``) over HTTP.
        metrics_host: the address the metrics are served on (loopback by default;
            another address exposes them to that network).
        metrics_port: their port (0: any free port, logged at start).
        create_topics: create missing topics on start (idempotent).
        log_level: Faust's log level.
    """

    model_config = SettingsConfigDict(env_prefix="IMGOV_WORKER_", extra="ignore")

    app_id: str = Field(DEFAULT_APP_ID, pattern=r"^[a-zA-Z0-9._-]{1,200}$")
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
    instance_id: str = Field("auto", pattern=r"^[a-zA-Z0-9._-]{1,200}$")
    session_timeout_s: float = Field(30.0, ge=6, le=1800)
    heartbeat_interval_s: float = Field(3.0, gt=0, le=60)
    max_poll_interval_s: float = Field(300.0, ge=1, le=86400)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=3600)
    leave_group_on_stop: bool = True
    current_interval_s: float = Field(10.0, gt=0, le=3600)
    checkpoint_interval_s: float = Field(5.0, gt=0, le=300)
    audit_checkpoint_interval_s: float = Field(60.0, ge=1, le=86400)
    web_enabled: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    metrics_enabled: bool = True
    metrics_host: str = Field("127.0.0.1", min_length=1)
    metrics_port: int = Field(9810, ge=0, le=65535)
    create_topics: bool = True
    log_level: Literal["debug", "info", "warn", "warning", "error", "critical"] = "warn"

    @property
    def group_id(self) -> str:
        """The Faust app id (consumer group, state topic prefix) of this worker's role."""
        return self.app_id + KPI_GROUP_SUFFIX if self.role == "kpi" else self.app_id

    @property
    def group_instance_id(self) -> str | None:
        """The Kafka ``group.instance.id`` of this worker, None for dynamic membership.

        ``auto``: ``<group_id>-<host>-<8 hex digits of the state directory's path>``,
        stable across restarts of the same worker and distinct for two workers on
        one host (they cannot share a state directory).
        """
        if self.instance_id == "none":
            return None
        if self.instance_id != "auto":
            return self.instance_id
        where = str(self.datadir.expanduser().resolve())
        digest = hashlib.sha256(where.encode()).hexdigest()[:8]
        host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
        return f"{self.group_id}-{host[:60]}-{digest}"

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be at most a third"
                f" of session_timeout_s ({self.session_timeout_s:g})"
            )
        return self

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
    instance_id: str | None = None
    session_timeout_s: float | None = None
    heartbeat_interval_s: float | None = None
    max_poll_interval_s: float | None = None
    shutdown_timeout_s: float | None = None
    leave_group_on_stop: bool | None = None
    current_interval_s: float | None = None
    checkpoint_interval_s: float | None = None
    audit_checkpoint_interval_s: float | None = None
    web_enabled: bool | None = None
    web_host: str | None = None
    web_port: int | None = None
    metrics_enabled: bool | None = None
    metrics_host: str | None = None
    metrics_port: int | None = None
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
