"""Starting the live worker: settings, topics, the Faust app, then Faust's ``Worker``.

``run_worker`` is what ``imgov worker`` calls. It validates every setting before
anything connects, creates missing topics (idempotent; the partition count of the
state topics must equal the input topics', so the worker checks it), builds the app
(``streams.runtime.app``) and hands it to Faust's worker, which owns the event loop
until the process stops; SIGTERM and SIGINT stop it gracefully (``streams.runtime.stop``).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ImgovError
from schemas.units import DAY_MS
from sinks.clickhouse.settings import ClickHouseSettings
from streams.governance import (
    GovernanceSettings,
    checkpoint_keyring,
    lineage_config,
    load_settings,
    settings_from_mapping,
)
from streams.kafka_security import KafkaLoginError, check_login_blocking
from streams.metrics import MetricsServer, WorkerMetrics, serve_metrics
from streams.runtime.settings import (
    KafkaSettings,
    WorkerConfigError,
    WorkerSettings,
    load_kafka_settings,
    load_worker_settings,
)
from streams.runtime.topic_admin import TopicRole, TopicSpec, create_topics, load_topics
from streams.topics import INPUT_TOPICS, WorkerTopics

__all__ = ["WorkerPlan", "ensure_worker_topics", "plan_worker", "run_worker"]

log = logging.getLogger("imgov.worker")


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """Every validated setting the worker starts with."""

    worker: WorkerSettings
    governance: GovernanceSettings
    kafka: KafkaSettings
    clickhouse: ClickHouseSettings


def plan_worker(config_file: Path | None = None, *, demo: bool = False) -> WorkerPlan:
    """Loads and validates all settings (no connection is made).

    Raises:
        WorkerConfigError: a worker setting is invalid.
        ConfigurationError: a governance setting is invalid (e.g. no pseudonym key).
    """
    worker = load_worker_settings(config_file)
    governance = _governance_settings(config_file, demo)
    lineage_config(governance)  # fails now, with its message, rather than at first event
    checkpoint_keyring(governance)  # the audit checkpoint key, likewise
    try:
        kafka = load_kafka_settings()
    except ImgovError as exc:
        raise WorkerConfigError(str(exc)) from exc
    try:
        clickhouse = ClickHouseSettings()
    except Exception as exc:  # pydantic ValidationError from IMGOV_CLICKHOUSE_*
        raise WorkerConfigError(f"invalid ClickHouse settings: {exc}") from exc
    for host in kafka.bootstrap.split(","):
        if not host.strip() or ":" not in host:
            raise WorkerConfigError(
                f"IMGOV_KAFKA_BOOTSTRAP must be host:port[,host:port], not {kafka.bootstrap!r}"
            )
    return WorkerPlan(worker, governance, kafka, clickhouse)


def _governance_settings(config_file: Path | None, demo: bool) -> GovernanceSettings:
    """Governance settings from the same file, without its ``[worker]`` table."""
    if config_file is None:
        return load_settings(demo=demo)
    try:
        raw = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkerConfigError(f"cannot read {config_file}: {exc}") from exc
    raw.pop("worker", None)
    # Relative paths in the file resolve against its folder, as load_settings does.
    return settings_from_mapping(raw, config_file.parent, source=config_file, demo=demo)


def ensure_worker_topics(plan: WorkerPlan) -> None:
    """Creates the worker's topics if missing; checks the partition counts.

    Raises:
        WorkerConfigError: existing input topics have another partition count than
            the ``partitions`` setting (state tables are co-partitioned with them).
        TopicAdminError: the broker is unreachable or refused a topic (a replication
            factor above the number of live brokers is named as such).
        TopicsError: ``IMGOV_KAFKA_MIN_INSYNC_REPLICAS`` is above a topic's
            replication factor.
    """
    topics = WorkerTopics.with_namespace(plan.worker.topic_namespace)
    base = load_topics()
    # The contributions topic is replicated like the inputs it is derived from (the
    # settings' replication, applied to every spec by create_topics, comes over both).
    inputs = base.get(INPUT_TOPICS[0])
    contributions_config = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
    if "min.insync.replicas" in inputs.config:
        contributions_config["min.insync.replicas"] = inputs.config["min.insync.replicas"]
    specs = []
    for spec in base.topics:
        name = plan.worker.topic_namespace + spec.name
        partitions = plan.worker.partitions if spec.role is TopicRole.INPUT else spec.partitions
        specs.append(spec.model_copy(update={"name": name, "partitions": partitions}))
    specs.append(
        TopicSpec(
            name=topics.contributions,
            role=TopicRole.OUTPUT,
            partitions=plan.worker.partitions,
            replication_factor=inputs.replication_factor,
            config=contributions_config,
        )
    )
    results = create_topics(
        plan.kafka.bootstrap,
        specs,
        replication_factor=plan.kafka.replication_factor,
        min_insync_replicas=plan.kafka.min_insync_replicas,
        security=plan.kafka.security(),
    )
    wrong = [
        r
        for r in results
        if r.partitions_differ and r.name in (*topics.inputs, topics.contributions)
    ]
    if wrong:
        detail = ", ".join(f"{r.name} has {r.existing_partitions}" for r in wrong)
        raise WorkerConfigError(
            f"partitions = {plan.worker.partitions} but {detail}: set IMGOV_WORKER_PARTITIONS "
            "to the input topics' partition count"
        )


def run_worker(plan: WorkerPlan) -> None:
    """Runs the worker until it is stopped (SIGINT/SIGTERM); blocks.

    Raises:
        ImgovError: the broker refused the login (TLS/SASL), topics could not be
            prepared, or the app could not be built.
    """
    from streams.runtime.app import build_app
    from streams.runtime.stop import GracefulStop, ImgovWorker

    metrics = WorkerMetrics() if plan.worker.metrics_enabled else None
    server = None if metrics is None else _serve(metrics, plan.worker)
    try:
        # Faust retries a refused login for ever, silently: refuse to start instead.
        try:
            check_login_blocking(plan.kafka.bootstrap, plan.kafka.security())
        except KafkaLoginError as exc:
            raise WorkerError(str(exc)) from exc
        if plan.worker.create_topics:
            ensure_worker_topics(plan)
        plan.worker.datadir.mkdir(parents=True, exist_ok=True)
        app = build_app(plan.worker, plan.governance, plan.kafka, plan.clickhouse, metrics)
        level = "warning" if plan.worker.log_level == "warn" else plan.worker.log_level
        stop = GracefulStop(app, plan.worker, plan.kafka)
        worker = ImgovWorker(app, stop, loglevel=level, quiet=True)
        # Faust's start-up spinner sets the root logger to DEBUG (so that every record
        # turns it) for as long as the worker runs: every debug call of aiokafka and
        # Faust then builds a record, 7% of the worker's time in the live benchmark.
        worker.spinner = None
        try:
            worker.execute_from_commandline()
        finally:
            stop.finish()
    finally:
        if server is not None:
            server.close()


def _serve(metrics: WorkerMetrics, worker: WorkerSettings) -> MetricsServer:
    """Serves the metrics before anything connects, so a taken port stops the start."""
    host, port = worker.metrics_host, worker.metrics_port
    try:
        server = serve_metrics(metrics.registry, host, port)
    except OSError as exc:
        raise WorkerError(
            f"cannot serve metrics on {host}:{port} ({exc}): another process has the port;"
            " set IMGOV_WORKER_METRICS_PORT (0: any free port) or IMGOV_WORKER_METRICS_ENABLED"
        ) from exc
    # Said at warning level so that it shows at the default log level: with port 0,
    # the operator learns the port here only.
    log.warning("metrics at http://%s:%d/metrics", host, server.port)
    return server


class WorkerError(ImgovError):
    """The worker could not start."""
