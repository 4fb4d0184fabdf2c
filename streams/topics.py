"""Every topic, state store and consumer-group name of imgov, and nothing else.

The one module that knows the names (STYLE rule 6). Partitions, replication and topic
configs live in ``infra/kafka/topics.toml`` (DESIGN §6), read by
``streams.runtime.topic_admin``. Names are optionally behind a ``topic_namespace``
prefix (tests and side-by-side deployments use one; production leaves it empty):
``WorkerTopics.with_namespace``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALERT_TOPIC",
    "ALL_TOPICS",
    "AUDIT_CHECKPOINT_TOPIC",
    "BREACH_TOPIC",
    "CONTRIBUTIONS_TOPIC",
    "DEFAULT_APP_ID",
    "DLQ_TOPIC",
    "INFERENCE_TOPIC",
    "INPUT_TOPICS",
    "KPI_AGENT",
    "KPI_GROUP_SUFFIX",
    "KPI_TABLE",
    "KPI_TOPIC",
    "LINEAGE_AGENT",
    "LINEAGE_TABLE",
    "LINEAGE_TOPIC",
    "OUTPUT_TOPICS",
    "REPORT_TOPIC",
    "REVIEW_TOPIC",
    "WorkerTopics",
]

# Inputs: keyed by study_uid and co-partitioned (same partition count) for the join.
INFERENCE_TOPIC = "imaging.ai.inference.v1"
ALERT_TOPIC = "imaging.ai.alert.v1"
REPORT_TOPIC = "imaging.report.v1"
INPUT_TOPICS: tuple[str, ...] = (INFERENCE_TOPIC, ALERT_TOPIC, REPORT_TOPIC)

LINEAGE_TOPIC = "governance.lineage.v1"
KPI_TOPIC = "governance.kpi.v1"
BREACH_TOPIC = "governance.breach.v1"
REVIEW_TOPIC = "governance.review.v1"
DLQ_TOPIC = "governance.dlq.v1"
AUDIT_CHECKPOINT_TOPIC = "governance.audit.checkpoint.v1"
"""Signed audit checkpoints (chain heads' Merkle root), keyed by input partition, compacted."""
OUTPUT_TOPICS: tuple[str, ...] = (
    LINEAGE_TOPIC,
    KPI_TOPIC,
    BREACH_TOPIC,
    REVIEW_TOPIC,
    DLQ_TOPIC,
    AUDIT_CHECKPOINT_TOPIC,
)

ALL_TOPICS: tuple[str, ...] = INPUT_TOPICS + OUTPUT_TOPICS

CONTRIBUTIONS_TOPIC = "imgov.internal.kpi-contributions.v1"
"""Internal: lineage revisions repartitioned by KPI dimensions (algorithm, finding)."""

# State stores (changelog-backed Faust tables): their changelog topics are
# ``<group id>-<store>-changelog``.
LINEAGE_TABLE = "lineage-state"
KPI_TABLE = "kpi-state"

# Faust agents (stable names: they name the agents' internal state).
LINEAGE_AGENT = "imgov-lineage"
KPI_AGENT = "imgov-kpi"

DEFAULT_APP_ID = "imgov-governance"
"""The default Faust application id = consumer group of the ``all`` and ``lineage`` roles."""

KPI_GROUP_SUFFIX = "-kpi"
"""The ``kpi`` role's consumer group is the app id plus this suffix."""


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
    audit_checkpoint: str

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
            audit_checkpoint=n + AUDIT_CHECKPOINT_TOPIC,
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
            AUDIT_CHECKPOINT_TOPIC,
        ):
            if topic.endswith(name):
                return name
        return topic
