"""The topic definitions file and idempotent topic creation.

The names are constants of ``streams.topics``; their partitions, replication and configs
live in ``infra/kafka/topics.toml`` (DESIGN §6). Called by ``imgov topics create``, by
the worker on start, and by the integration tests.

Exceptions::

    ImgovError (schemas.errors)
    └── TopicsError            anything about topics
        ├── TopicsFileError    topics.toml is missing, not TOML, or breaks a rule
        │                      (e.g. the three inputs differ in partition count)
        └── TopicAdminError    the broker could not be reached, refused the login
                               (TLS/SASL, named as such) or refused a topic;
                               ``results`` holds what was done before the failure
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import ImgovError
from streams.kafka_security import KafkaLoginError, KafkaSecurity, check_login_blocking
from streams.paths import REPO_ROOT
from streams.topics import ALL_TOPICS, INPUT_TOPICS

__all__ = [
    "DEFAULT_TOPICS_FILE",
    "CreationStatus",
    "TopicAdminError",
    "TopicCreation",
    "TopicRole",
    "TopicSpec",
    "TopicsError",
    "TopicsFile",
    "TopicsFileError",
    "create_topics",
    "load_topics",
    "replicated",
]

DEFAULT_TOPICS_FILE = REPO_ROOT / "infra" / "kafka" / "topics.toml"

# Kafka's own rule (kafka.common.internals.Topic): 1-249 chars of [a-zA-Z0-9._-].
_TOPIC_NAME_PATTERN = r"^[a-zA-Z0-9._-]{1,249}$"
_TOPIC_ALREADY_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38
_MIN_INSYNC = "min.insync.replicas"


class TopicsError(ImgovError):
    """Something about topics: their definitions file or their creation."""


class TopicsFileError(TopicsError):
    """The topic definitions file is missing, is not TOML, or breaks a rule."""


class TopicAdminError(TopicsError):
    """The broker could not be reached, or refused to create a topic.

    Attributes:
        results: what was done for each topic before or despite the failure.
    """

    def __init__(self, message: str, results: Sequence[TopicCreation] = ()) -> None:
        super().__init__(message)
        self.results = tuple(results)


class TopicRole(enum.StrEnum):
    """What a topic is for; inputs must be co-partitioned."""

    INPUT = "input"
    OUTPUT = "output"
    DLQ = "dlq"


class TopicSpec(BaseModel):
    """One topic as defined in topics.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_TOPIC_NAME_PATTERN)
    role: TopicRole
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    config: Mapping[str, str] = Field(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _config_values_as_text(cls, value: object) -> object:
        # Kafka takes every topic config as a string; accept TOML ints and bools too.
        if isinstance(value, Mapping):
            return {
                str(k): (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value


class TopicsFile(BaseModel):
    """The validated content of topics.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: tuple[TopicSpec, ...]

    @model_validator(mode="after")
    def _check_rules(self) -> TopicsFile:
        names = [t.name for t in self.topics]
        missing = [n for n in ALL_TOPICS if n not in names]
        if missing:
            raise ValueError(f"topics missing from the file: {', '.join(missing)}")
        inputs = [t for t in self.topics if t.role is TopicRole.INPUT]
        if {t.name for t in inputs} != set(INPUT_TOPICS):
            raise ValueError(
                f"role = 'input' must be exactly {', '.join(INPUT_TOPICS)}; "
                f"found {', '.join(t.name for t in inputs) or 'none'}"
            )
        counts = {t.name: t.partitions for t in inputs}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{name}={n}" for name, n in counts.items())
            raise ValueError(
                "the input topics must have the same partition count, because they are "
                f"co-partitioned by study_uid for the lineage join; found {detail}"
            )
        return self

    def get(self, name: str) -> TopicSpec:
        """Returns the spec of topic ``name``; raises KeyError if it is not defined."""
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(name)


def load_topics(path: Path | str | None = None) -> TopicsFile:
    """Reads and validates a topic definitions file.

    Args:
        path: the TOML file; ``infra/kafka/topics.toml`` of this checkout when omitted.

    Returns:
        The validated definitions, in file order.

    Raises:
        TopicsFileError: the file is missing, is not TOML, or breaks a rule; the message
            names the file and the rule.
    """
    file = Path(path) if path is not None else DEFAULT_TOPICS_FILE
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicsFileError(f"cannot read topic definitions {file}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopicsFileError(f"{file} is not valid TOML: {exc}") from exc
    table = raw.get("topics")
    if not isinstance(table, dict) or not table:
        raise TopicsFileError(f'{file} has no [topics."<name>"] tables')
    specs = []
    for name, body in table.items():
        try:
            if not isinstance(body, dict):
                raise TopicsFileError(f'{file}: topics."{name}" must be a table')
            specs.append(TopicSpec.model_validate({"name": name, **body}))
        except ValidationError as exc:
            raise TopicsFileError(f'{file}: topic "{name}": {_validation_summary(exc)}') from exc
    try:
        return TopicsFile(topics=tuple(specs))
    except ValidationError as exc:
        raise TopicsFileError(f"{file}: {_validation_summary(exc)}") from exc


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        # A rule of ours (a ValueError in a validator) reads better without pydantic's prefix.
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


# ----------------------------------------------------------------------------- creation


class CreationStatus(enum.StrEnum):
    """What ``create_topics`` did with one topic."""

    CREATED = "created"
    EXISTS = "exists"
    FAILED = "failed"


@dataclass(frozen=True)
class TopicCreation:
    """The outcome for one topic.

    Attributes:
        name: the topic.
        status: created, already there, or refused.
        partitions: partitions requested from the file.
        existing_partitions: for EXISTS, the partition count found on the broker
            (may differ from ``partitions``: an existing topic is never altered).
        message: the broker's reason for FAILED.
    """

    name: str
    status: CreationStatus
    partitions: int
    existing_partitions: int | None = None
    message: str = ""

    @property
    def partitions_differ(self) -> bool:
        """True when an existing topic does not have the partition count of the file."""
        return self.existing_partitions is not None and self.existing_partitions != self.partitions


class TopicAdmin(Protocol):
    """The part of kafka-python's KafkaAdminClient that topic creation uses."""

    def create_topics(
        self,
        new_topics: Mapping[str, Mapping[str, Any]],
        timeout_ms: int | None = ...,
        validate_only: bool = ...,
        raise_errors: bool = ...,
        wait_for_metadata: bool = ...,
    ) -> dict[str, Any]: ...

    def describe_topics(self, topics: list[str] | None = ...) -> list[dict[str, Any]]: ...

    def wait_for_topics(self, topic_names: list[str], timeout_ms: int = ...) -> None: ...

    def close(self) -> None: ...


def create_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec] | TopicsFile | None = None,
    *,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    timeout_ms: int = 30_000,
    admin: TopicAdmin | None = None,
    security: KafkaSecurity | None = None,
) -> list[TopicCreation]:
    """Creates the topics that do not exist yet; existing topics are left untouched.

    Safe to run any number of times. Returns once every created topic has a leader
    for each partition, so producers can use them at once.

    Args:
        bootstrap: ``host:port[,host:port]`` of the cluster.
        topics: the specs to create; all of ``infra/kafka/topics.toml`` when omitted.
        replication_factor: overrides the file's value for every topic (a real cluster:
            ``KafkaSettings.replication_factor``).
        min_insync_replicas: ``min.insync.replicas`` of every topic, over the file's
            configs (``KafkaSettings.min_insync_replicas``).
        timeout_ms: broker-side creation timeout, and the wait for leaders.
        admin: an already-open admin client (tests); one is opened and closed otherwise.
        security: TLS and SASL of the connection (``KafkaSettings.security()``);
            PLAINTEXT when omitted.

    Returns:
        One TopicCreation per topic, in the given order.

    Raises:
        TopicAdminError: the broker is unreachable, refused the login, or refused a topic (then
            ``results`` holds the outcome of every topic, the refusals included); a
            replication factor above the number of live brokers is named as such.
        TopicsFileError: ``topics`` was omitted and the default file is invalid.
        TopicsError: a topic would get a ``min.insync.replicas`` above its replication
            factor (every ``acks=all`` write to it would fail).
    """
    if topics is None:
        topics = load_topics()
    specs = [
        replicated(spec, replication_factor, min_insync_replicas)
        for spec in (topics.topics if isinstance(topics, TopicsFile) else topics)
    ]
    if admin is not None:
        return _create_with(admin, specs, timeout_ms)
    client = _open_admin(bootstrap, timeout_ms, security or KafkaSecurity())
    try:
        return _create_with(client, specs, timeout_ms)
    finally:
        client.close()


def replicated(
    spec: TopicSpec, replication_factor: int | None, min_insync_replicas: int | None
) -> TopicSpec:
    """Returns ``spec`` with the replication of the settings applied (None: the spec's).

    Raises:
        TopicsError: the topic's ``min.insync.replicas`` would exceed its replication
            factor.
    """
    rf = replication_factor or spec.replication_factor
    config = dict(spec.config)
    if min_insync_replicas is not None:
        config[_MIN_INSYNC] = str(min_insync_replicas)
    min_isr = int(config.get(_MIN_INSYNC, "1"))
    if min_isr > rf:
        raise TopicsError(
            f"topic {spec.name}: min.insync.replicas {min_isr} is above its replication"
            f" factor {rf}, so no acks=all write could succeed; lower"
            " IMGOV_KAFKA_MIN_INSYNC_REPLICAS or raise IMGOV_KAFKA_REPLICATION_FACTOR"
        )
    return spec.model_copy(update={"replication_factor": rf, "config": config})


def _open_admin(bootstrap: str, timeout_ms: int, security: KafkaSecurity) -> TopicAdmin:
    # kafka-python is imported where it is used: the topic names and the file loader
    # (imported by the CLI, the simulator and the replay driver) do not need it.
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        check_login_blocking(bootstrap, security, timeout_s=min(timeout_ms, 10_000) / 1000)
    except KafkaLoginError as exc:
        raise TopicAdminError(str(exc)) from exc
    try:
        client: TopicAdmin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="imgov-topics",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=min(timeout_ms, 10_000),
            **security.client_options(),
        )
    except KafkaError as exc:
        raise TopicAdminError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    return client


def _create_with(
    admin: TopicAdmin, specs: Sequence[TopicSpec], timeout_ms: int
) -> list[TopicCreation]:
    from kafka.errors import KafkaError

    if not specs:
        return []
    request = {
        spec.name: {
            "num_partitions": spec.partitions,
            "replication_factor": spec.replication_factor,
            "configs": dict(spec.config),
        }
        for spec in specs
    }
    try:
        response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        answers = {t["name"]: t for t in response["topics"]}
        existing = [s.name for s in specs if answers[s.name]["error_code"] == _TOPIC_ALREADY_EXISTS]
        found = _partition_counts(admin, existing)
        results = [_outcome(spec, answers[spec.name], found) for spec in specs]
        created = [r.name for r in results if r.status is CreationStatus.CREATED]
        admin.wait_for_topics(created, timeout_ms=timeout_ms)
    except KafkaError as exc:
        raise TopicAdminError(f"creating topics {', '.join(request)} failed: {exc}") from exc

    failed = [r for r in results if r.status is CreationStatus.FAILED]
    if failed:
        detail = "; ".join(f"{r.name}: {r.message}" for r in failed)
        raise TopicAdminError(f"the broker refused {len(failed)} topic(s): {detail}", results)
    return results


def _partition_counts(admin: TopicAdmin, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}


def _outcome(spec: TopicSpec, answer: Mapping[str, Any], found: Mapping[str, int]) -> TopicCreation:
    code = answer["error_code"]
    if code == 0:
        return TopicCreation(spec.name, CreationStatus.CREATED, spec.partitions)
    if code == _TOPIC_ALREADY_EXISTS:
        return TopicCreation(
            spec.name, CreationStatus.EXISTS, spec.partitions, found.get(spec.name)
        )
    message = answer.get("error_message") or f"error code {code}"
    if code == _INVALID_REPLICATION_FACTOR:
        # Kafka: "The target replication factor of 3 cannot be reached because only 1
        # broker(s) are registered."
        message = (
            f"{message} (replication factor {spec.replication_factor}: set"
            " IMGOV_KAFKA_REPLICATION_FACTOR, or --replication-factor, to at most the"
            " number of live brokers, or start the missing ones)"
        )
    return TopicCreation(spec.name, CreationStatus.FAILED, spec.partitions, message=message)
