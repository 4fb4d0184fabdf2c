"""What ``imgov status`` shows: the pipeline's state, gathered from three places.

* **Kafka** (the brokers' view, which outlives a stopped worker): each consumer group's
  state and members, with the partitions each member is assigned, and per
  topic-partition the committed offset, the end offset and the lag between them.
* **The workers' metrics endpoints** (``streams.metrics``, optional): watermark lag per
  stage, the last commit, sink state (writing, or holding offsets while ClickHouse is
  down), the last ClickHouse flush, open studies and resident memory.
* **The audit database** (ClickHouse, ``IMGOV_CLICKHOUSE_*``): dead letters of the last
  hour by reason, and the breaches open now.

``gather_status`` asks all three at once and returns a plain ``PipelineStatus``; what
could not be reached is listed in ``PipelineStatus.errors`` (and its part left empty),
never raised: the command renders whatever answered. Rendering lives in
``streams.cli.status``. Every instant is epoch milliseconds, every duration
milliseconds, as everywhere in imgov.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from schemas.units import HOUR_MS
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import ClickHouseBackend, QueryBackend, QueryError
from streams.governance import wall_clock_ms
from streams.kafka_security import KafkaLoginError, KafkaSecurity, check_login_blocking
from streams.topics import KPI_GROUP_SUFFIX, WorkerTopics

__all__ = [
    "DEAD_LETTER_WINDOW_MS",
    "AuditStatus",
    "DeadLetterCount",
    "GroupMember",
    "GroupStatus",
    "OpenBreach",
    "PartitionLag",
    "PipelineStatus",
    "StatusRequest",
    "TopicLag",
    "Unreachable",
    "WorkerReading",
    "audit_status",
    "gather_status",
    "group_member",
    "parse_worker_metrics",
    "partition_lag",
    "read_audit",
    "read_groups",
    "read_worker_metrics",
]

DEAD_LETTER_WINDOW_MS = HOUR_MS
"""Dead letters are counted over this much time before the status was taken."""

_NO_GROUP = "Dead"
"""The state the brokers report for a group they do not know (no member, no commit)."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """A source that did not answer, or answered with an error.

    Attributes:
        source: ``kafka``, ``metrics`` or ``clickhouse``.
        where: its address (bootstrap servers, URL, host:port/database).
        reason: what went wrong, in one line.
    """

    source: str
    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member of a consumer group, as the group coordinator describes it.

    Attributes:
        member_id: the coordinator's id of this membership.
        client_id: the client's ``client.id`` (Faust: the app id).
        host: the address the member connected from.
        instance_id: its static ``group.instance.id``; None for dynamic membership.
        assigned: the topic-partitions assigned to it, sorted.
    """

    member_id: str
    client_id: str
    host: str
    instance_id: str | None
    assigned: tuple[tuple[str, int], ...]

    @property
    def name(self) -> str:
        """How a person tells the member apart: its static id, else its client id."""
        return self.instance_id or self.client_id or self.member_id


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A group's progress on one topic-partition.

    Attributes:
        committed: the group's committed offset; None when it never committed here.
        end: the partition's end offset; None when the topic no longer exists.
        lag: messages not committed yet (from the start of the log when nothing
            was committed); None when the end is unknown.
        owner: the name of the member assigned the partition, if any.
    """

    topic: str
    partition: int
    committed: int | None
    end: int | None
    lag: int | None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class TopicLag:
    """A group's progress on one topic: its partitions summed.

    Attributes:
        committed: the sum of the committed offsets; None when nothing was committed.
        lagging: ``(partition, lag)`` of every partition with a lag, by partition.
        unknown: partitions whose end offset is unknown (topic gone).
    """

    topic: str
    partitions: int
    committed: int | None
    end: int
    lag: int
    lagging: tuple[tuple[int, int], ...]
    unknown: int


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A consumer group: its state (``Stable``, ``Empty``, ``PreparingRebalance``,
    ``CompletingRebalance``; ``Dead`` when the brokers do not know it), its members and
    its progress per topic-partition (sorted)."""

    group_id: str
    state: str
    members: tuple[GroupMember, ...]
    partitions: tuple[PartitionLag, ...]

    @property
    def exists(self) -> bool:
        """Whether the brokers know the group (it has members or committed offsets)."""
        return self.state != _NO_GROUP or any(p.committed is not None for p in self.partitions)

    @property
    def lag(self) -> int:
        """Messages not committed, over every partition whose end is known."""
        return sum(p.lag for p in self.partitions if p.lag is not None)

    def topics(self) -> list[TopicLag]:
        """The progress per topic, in topic order."""
        by_topic: dict[str, list[PartitionLag]] = {}
        for p in self.partitions:
            by_topic.setdefault(p.topic, []).append(p)
        return [
            TopicLag(
                topic=topic,
                partitions=len(parts),
                committed=(
                    sum(p.committed or 0 for p in parts)
                    if any(p.committed is not None for p in parts)
                    else None
                ),
                end=sum(p.end or 0 for p in parts),
                lag=sum(p.lag or 0 for p in parts),
                lagging=tuple((p.partition, p.lag) for p in parts if p.lag),
                unknown=sum(1 for p in parts if p.end is None),
            )
            for topic, parts in sorted(by_topic.items())
        ]


@dataclass(frozen=True, slots=True)
class WorkerReading:
    """What one metrics endpoint reported (see ``streams.metrics``).

    Attributes:
        url: the endpoint.
        error: why it could not be read; None when it answered (every other field
            is empty when it did not).
        process: ``worker``, ``gateway`` or ``alerts`` (``imgov_build_info``).
        version: the imgov version the process runs.
        watermark_lag_ms: per stage, wall clock minus its event-time watermark.
        last_commit_ms: the latest moment any of its partitions' commits moved.
        backpressure: per sink, True while it holds offsets (ClickHouse down).
        last_flush_ms: per sink, its last successful flush.
        open_studies: studies held in the lineage state.
        resident_memory_bytes: the process's resident memory.
    """

    url: str
    error: str | None = None
    process: str | None = None
    version: str | None = None
    watermark_lag_ms: Mapping[str, int] = field(default_factory=dict)
    last_commit_ms: int | None = None
    backpressure: Mapping[str, bool] = field(default_factory=dict)
    last_flush_ms: Mapping[str, int] = field(default_factory=dict)
    open_studies: int | None = None
    resident_memory_bytes: int | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    """Dead letters of one reason written in the window; ``last_ms``: the newest."""

    reason: str
    count: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class OpenBreach:
    """A breach that opened and has not resolved (view ``breaches_open``)."""

    breach_id: str
    severity: str
    rule_id: str
    kpi: str
    site_id: str
    algorithm_name: str
    algorithm_version: str
    finding_code: str
    window_size: str
    window_start_ms: int
    window_end_ms: int
    value: float | None
    threshold: float | None


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """The audit database's answer.

    Attributes:
        where: ``host:port/database``.
        dead_letters: per reason, the dead letters received in the last
            ``DEAD_LETTER_WINDOW_MS``, by reason.
        open_breaches: CRITICAL first, then the most recent window first.
    """

    where: str
    dead_letters: tuple[DeadLetterCount, ...]
    open_breaches: tuple[OpenBreach, ...]


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """Everything ``imgov status`` gathered at ``taken_at_ms``.

    Attributes:
        groups: the consumer groups asked about (empty when Kafka did not answer).
        workers: one reading per metrics endpoint, reachable or not.
        audit: None when the audit database did not answer.
        errors: every source that could not be reached; empty when all answered.
    """

    taken_at_ms: int
    bootstrap: str
    namespace: str
    groups: tuple[GroupStatus, ...] = ()
    workers: tuple[WorkerReading, ...] = ()
    audit: AuditStatus | None = None
    errors: tuple[Unreachable, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every source answered."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """Returns the status as JSON-ready data (with per-topic totals added)."""
        doc = dataclasses.asdict(self)
        doc["ok"] = self.ok
        for group, out in zip(self.groups, doc["groups"], strict=True):
            out["exists"] = group.exists
            out["lag"] = group.lag
            out["topics"] = [dataclasses.asdict(t) for t in group.topics()]
        return doc


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """What to ask.

    Attributes:
        bootstrap: the brokers.
        groups: consumer groups to show, in order.
        optional_groups: of ``groups``, the ones left out when the brokers do not know
            them (the ``-kpi`` group exists only where a ``kpi`` role worker runs).
        namespace: the workers' topic namespace: a group is shown with the
            namespace's input topics (a ``-kpi`` group: the contributions topic) even
            before it committed on them, so a backlog shows as lag.
        metrics_urls: the workers' metrics endpoints.
        clickhouse: the audit database.
        timeout_s: how long each source may take to answer.
        security: TLS and SASL of the Kafka clients.
    """

    bootstrap: str
    groups: tuple[str, ...]
    optional_groups: frozenset[str] = frozenset()
    namespace: str = ""
    metrics_urls: tuple[str, ...] = ()
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    timeout_s: float = 5.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


def gather_status(
    request: StatusRequest, clock: Callable[[], int] = wall_clock_ms
) -> PipelineStatus:
    """Asks Kafka, every metrics endpoint and the audit database, all at once.

    Returns within about ``request.timeout_s`` (plus a connection's own timeouts);
    never raises for a source that is down: it is listed in ``errors``.
    """
    now_ms = clock()
    with ThreadPoolExecutor(max_workers=2 + len(request.metrics_urls)) as pool:
        kafka = pool.submit(
            read_groups,
            request.bootstrap,
            request.groups,
            _expected_topics(request.groups, request.namespace),
            timeout_s=request.timeout_s,
            security=request.security,
        )
        audit = pool.submit(read_audit, request.clickhouse, now_ms, timeout_s=request.timeout_s)
        readings = [
            pool.submit(read_worker_metrics, url, timeout_s=request.timeout_s)
            for url in request.metrics_urls
        ]
        groups, kafka_errors = kafka.result()
        audit_status, audit_error = audit.result()
        workers = tuple(r.result() for r in readings)
    errors = [*kafka_errors]
    errors += [Unreachable("metrics", w.url, w.error) for w in workers if w.error is not None]
    if audit_error is not None:
        errors.append(audit_error)
    return PipelineStatus(
        taken_at_ms=now_ms,
        bootstrap=request.bootstrap,
        namespace=request.namespace,
        groups=tuple(g for g in groups if g.exists or g.group_id not in request.optional_groups),
        workers=workers,
        audit=audit_status,
        errors=tuple(errors),
    )


def _expected_topics(groups: Sequence[str], namespace: str) -> dict[str, tuple[str, ...]]:
    topics = WorkerTopics.with_namespace(namespace)
    return {
        g: (topics.contributions,) if g.endswith(KPI_GROUP_SUFFIX) else topics.inputs
        for g in groups
    }


# --- Kafka ---------------------------------------------------------------------------


def read_groups(
    bootstrap: str,
    group_ids: Sequence[str],
    expected_topics: Mapping[str, Sequence[str]],
    *,
    timeout_s: float = 5.0,
    security: KafkaSecurity | None = None,
) -> tuple[list[GroupStatus], list[Unreachable]]:
    """Describes ``group_ids`` and their lag, as the brokers know them.

    Args:
        expected_topics: per group, topics to show even where it committed nothing
            (skipped when they do not exist).
        security: TLS and SASL of the clients (PLAINTEXT when omitted); a refused
            login is reported as such rather than as a timeout.

    Returns:
        The groups that could be read, in order, and what went wrong (one entry when
        the brokers did not answer, else one per group that could not be read).
    """
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient

    security = security or KafkaSecurity()
    try:
        check_login_blocking(bootstrap, security, timeout_s)
    except KafkaLoginError as exc:
        return [], [Unreachable("kafka", bootstrap, str(exc))]
    timeouts = {
        "bootstrap_timeout_ms": int(timeout_s * 1000),
        "request_timeout_ms": int(timeout_s * 1000),
        **security.client_options(),
    }
    admin: Any = None
    consumer: Any = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **timeouts)
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            # Asking about a namespace must never create its topics.
            allow_auto_create_topics=False,
            **timeouts,
        )
        described = admin.describe_groups(list(group_ids))
    except Exception as exc:  # kafka-python raises KafkaError, OSError, AssertionError...
        _close(admin, consumer)
        return [], [Unreachable("kafka", bootstrap, _one_line(exc))]
    groups, errors = [], []
    try:
        for group_id in group_ids:
            try:
                groups.append(
                    _read_group(
                        admin,
                        consumer,
                        group_id,
                        described.get(group_id, {}),
                        expected_topics.get(group_id, ()),
                    )
                )
            except Exception as exc:  # as above: this group could not be read
                errors.append(
                    Unreachable("kafka", bootstrap, f"group {group_id}: {_one_line(exc)}")
                )
    finally:
        _close(admin, consumer)
    return groups, errors


def _read_group(
    admin: Any,
    consumer: Any,
    group_id: str,
    description: Mapping[str, Any],
    expected_topics: Sequence[str],
) -> GroupStatus:
    from kafka import TopicPartition

    members = tuple(
        sorted((group_member(m) for m in description.get("members") or ()), key=lambda m: m.name)
    )
    state = str(description.get("group_state") or _NO_GROUP)
    if description.get("error"):  # GroupIdNotFoundError: the brokers do not know it
        state = _NO_GROUP
    committed = {
        (tp.topic, tp.partition): meta.offset
        for tp, meta in admin.list_group_offsets(group_id).get(group_id, {}).items()
        if meta.offset >= 0
    }
    keys = set(committed)
    partitions: dict[str, set[int]] = {}  # per topic; empty when it does not exist
    for topic in {*expected_topics, *(t for t, _ in committed)}:
        partitions[topic] = set(consumer.partitions_for_topic(topic) or ())
    for topic in expected_topics:
        keys.update((topic, p) for p in partitions[topic])
    existing = [TopicPartition(t, p) for t, p in keys if p in partitions[t]]
    ends = consumer.end_offsets(existing) if existing else {}
    starts = consumer.beginning_offsets(existing) if existing else {}
    owners = {tp: m.name for m in members for tp in m.assigned}
    return GroupStatus(
        group_id=group_id,
        state=state,
        members=members,
        partitions=tuple(
            partition_lag(
                topic,
                partition,
                committed.get((topic, partition)),
                ends.get(TopicPartition(topic, partition)),
                starts.get(TopicPartition(topic, partition)),
                owners.get((topic, partition)),
            )
            for topic, partition in sorted(keys)
        ),
    )


def partition_lag(
    topic: str,
    partition: int,
    committed: int | None,
    end: int | None,
    start: int | None,
    owner: str | None = None,
) -> PartitionLag:
    """Returns a partition's progress; with nothing committed the group starts at the
    log's start (the workers read from the earliest offset)."""
    lag = None
    if end is not None:
        position = committed if committed is not None else (start or 0)
        lag = max(end - position, 0)
    return PartitionLag(topic, partition, committed, end, lag, owner)


def group_member(raw: Mapping[str, Any]) -> GroupMember:
    """Returns a member from kafka-python's ``describe_groups`` dict.

    An assignment kafka-python could not decode (a non-consumer protocol) stays bytes:
    the member is then shown without partitions.
    """
    assignment = raw.get("member_assignment")
    assigned: list[tuple[str, int]] = []
    if isinstance(assignment, Mapping):
        for entry in assignment.get("assigned_partitions") or ():
            assigned.extend((str(entry["topic"]), int(p)) for p in entry["partitions"])
    return GroupMember(
        member_id=str(raw.get("member_id") or ""),
        client_id=str(raw.get("client_id") or ""),
        host=str(raw.get("client_host") or "").lstrip("/"),
        instance_id=raw.get("group_instance_id") or None,
        assigned=tuple(sorted(assigned)),
    )


def _close(*clients: Any) -> None:
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


# --- the workers' metrics endpoints ---------------------------------------------------


def read_worker_metrics(url: str, *, timeout_s: float = 5.0) -> WorkerReading:
    """Reads one metrics endpoint; one that does not answer gives a reading with only
    its ``error``."""
    if urlsplit(url).scheme not in {"http", "https"}:
        return WorkerReading(url, error="not an http:// or https:// URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.URLError as exc:
        return WorkerReading(url, error=_one_line(exc.reason))
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed responses
        return WorkerReading(url, error=_one_line(exc))
    try:
        return parse_worker_metrics(url, text)
    except ValueError as exc:
        return WorkerReading(url, error=f"not a Prometheus exposition: {_one_line(exc)}")


def parse_worker_metrics(url: str, text: str) -> WorkerReading:
    """Returns the reading of a Prometheus text exposition served at ``url``.

    Series the process does not have (a gateway has no watermark; a worker has none
    before its first event) are left out, not zero.

    Raises:
        ValueError: ``text`` is not a Prometheus text exposition.
    """
    process = version = None
    watermark: dict[str, int] = {}
    backpressure: dict[str, bool] = {}
    flushes: dict[str, int] = {}
    commits: list[int] = []
    open_studies = rss = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "imgov_build_info":
                process, version = labels.get("process"), labels.get("version")
            elif name == "imgov_watermark_lag_seconds":
                watermark[labels.get("stage", "")] = round(value * 1000)
            elif name == "imgov_consumer_last_commit_timestamp_seconds":
                commits.append(round(value * 1000))
            elif name == "imgov_sink_backpressure":
                backpressure[labels.get("sink", "")] = value > 0
            elif name == "imgov_clickhouse_last_flush_timestamp_seconds":
                flushes[labels.get("sink", "")] = round(value * 1000)
            elif name == "imgov_open_studies":
                open_studies = int(value)
            elif name == "process_resident_memory_bytes":
                rss = int(value)
    return WorkerReading(
        url=url,
        process=process,
        version=version,
        watermark_lag_ms=dict(sorted(watermark.items())),
        last_commit_ms=max(commits, default=None),
        backpressure=dict(sorted(backpressure.items())),
        last_flush_ms=dict(sorted(flushes.items())),
        open_studies=open_studies,
        resident_memory_bytes=rss,
    )


# --- the audit database ---------------------------------------------------------------

_DEAD_LETTERS_SQL = (
    "SELECT reason, count() AS n, max(received_at_ms) AS last_ms "
    "FROM rejected_events FINAL WHERE received_at_ms >= %(since_ms)s "
    "GROUP BY reason ORDER BY reason"
)
# The view holds the compliance definition of "open": an OPEN row and no RESOLVED one
# for the breach id (a breach keeps its id from OPEN to RESOLVED; FINAL collapses
# redelivered copies).
_OPEN_BREACHES_SQL = (
    "SELECT breach_id, severity, rule_id, kpi, site_id, algorithm_name, algorithm_version, "
    "finding_code, window_size, window_start_ms, window_end_ms, value, threshold "
    "FROM breaches_open"
)
_SEVERITY_ORDER = {"CRITICAL": 0, "WARNING": 1}
_NOT_MIGRATED = frozenset({60, 81})  # ClickHouse: UNKNOWN_TABLE, UNKNOWN_DATABASE


def read_audit(
    settings: ClickHouseSettings, now_ms: int, *, timeout_s: float = 5.0
) -> tuple[AuditStatus | None, Unreachable | None]:
    """Reads the dead letters of the last hour and the open breaches.

    Returns:
        The audit status and None, or None and why the database could not be read.
    """
    where = f"{settings.host}:{settings.port}/{settings.database}"
    try:
        backend = ClickHouseBackend.connect(settings, send_receive_timeout_s=timeout_s)
    except QueryError as exc:
        return None, Unreachable("clickhouse", where, _one_line(exc))
    try:
        return audit_status(backend, where, now_ms), None
    except QueryError as exc:  # down, not migrated, no permission
        hint = " (run imgov db migrate)" if exc.code in _NOT_MIGRATED else ""
        return None, Unreachable("clickhouse", where, _one_line(exc) + hint)
    finally:
        backend.close()


def audit_status(backend: QueryBackend, where: str, now_ms: int) -> AuditStatus:
    """Reads the audit status through any backend (a server, or chDB in tests).

    Raises:
        QueryError: a table or view is missing or the backend is down.
    """
    _, rows = backend.execute(_DEAD_LETTERS_SQL, {"since_ms": now_ms - DEAD_LETTER_WINDOW_MS})
    dead = tuple(DeadLetterCount(str(r), int(n), int(last)) for r, n, last in rows)
    columns, rows = backend.execute(_OPEN_BREACHES_SQL)
    breaches = [OpenBreach(**dict(zip(columns, row, strict=True))) for row in rows]
    breaches.sort(key=lambda b: (_SEVERITY_ORDER.get(b.severity, 2), -b.window_end_ms, b.breach_id))
    return AuditStatus(where=where, dead_letters=dead, open_breaches=tuple(breaches))


def _one_line(exc: object) -> str:
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text[:300]
