"""Governance breaches as Alertmanager alerts: the ``imgov alerts`` bridge (DESIGN §12).

The bridge reads ``governance.breach.v1`` and keeps Alertmanager's v2 API
(``POST /api/v2/alerts``) in step with it, so alerting systems that speak Alertmanager
need no Kafka client. Two parts:

- ``BreachAlertBook``, pure: a breach becomes an alert (``breach_alert_labels``,
  ``breach_alert_annotations``); the book holds which breaches are open and which were
  resolved, and says what to post at a given time (``due``). Tests drive it with a clock
  of their own.
- ``BreachAlertBridge``, the runtime: a kafka-python consumer feeds the book, an
  ``AlertmanagerClient`` posts what is due, with backoff while Alertmanager is down.

Alertmanager identifies an alert by its label set, so posting the same alert twice is
harmless, and every label is fixed for the life of a breach (its rule, series and
``breach_id``). Like Prometheus, the bridge gives a firing alert an ``endsAt`` a few
resend intervals ahead and posts it again every resend interval while the breach is
open: if the bridge stops, Alertmanager resolves the alert by itself at ``endsAt``. A
resolved breach is posted once (per start of the bridge) with ``endsAt`` at its
resolution. Kafka down: the bridge keeps posting what its book holds.

Idempotence. The bridge commits no offsets and joins no consumer group: on every start
it reads the breach topic from its beginning (``cleanup.policy = delete`` with 30 days
of retention, and one partition, so the order of a breach's OPEN and RESOLVED holds)
and rebuilds the book before it posts anything. A committed offset would skip the OPEN
messages of breaches still open, which must be posted again. A redelivered OPEN (a
worker publishes again what it had not committed, DESIGN §7) does not change an open
breach and does not reopen a resolved one: the book keeps the ids of resolved breaches
(a ``breach_id`` names one opening of a rule on a series, so it never opens twice). The
book's state is what the message-id header (``<breach_id>|<state>``) identifies. A
breach whose OPEN is older than the topic's retention is unknown after a restart (its
alert ends at ``endsAt``); a compacted breach topic (the key is the ``breach_id``) would
keep every open breach's OPEN for as long as it stays open.

Times come from the Kafka messages (their timestamp: when the worker published the
OPEN or the RESOLVED), so an alert's ``startsAt`` is the same after a restart.

Exceptions::

    ImgovError (schemas.errors)
    └── AlertmanagerError   a post to Alertmanager failed (unreachable, or refused);
                            the bridge keeps what it could not post and tries again
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError

from schemas.errors import DecodeError, ImgovError, RegistryUnavailableError
from schemas.records import Breach, BreachState
from schemas.units import format_utc
from sinks.query import substitute_params
from streams.kafka_security import KafkaSecurity
from streams.runtime.group_lag import brokers_reachable

if TYPE_CHECKING:
    from schemas.codec import Codec
    from streams.metrics import BridgeMetrics

__all__ = [
    "ALERTNAME",
    "ALERT_LABEL_NAMES",
    "AlertBatch",
    "AlertmanagerClient",
    "AlertmanagerError",
    "BreachAlertBook",
    "BreachAlertBridge",
    "breach_alert_annotations",
    "breach_alert_labels",
    "breach_link",
    "breach_rows_query",
    "kpi_series_query",
    "parse_alertmanager_url",
    "parse_link_base",
    "rfc3339",
]

log = logging.getLogger("imgov.alerts")

ALERTNAME = "ImgovGovernanceBreach"
ALERT_LABEL_NAMES = (
    "alertname",
    "severity",
    "rule",
    "kpi",
    "window",
    "site",
    "algorithm",
    "version",
    "finding",
    "breach_id",
    "source",
)
"""Every label of a breach alert: the rule and the series, never a study or a patient."""

SERIES_WINDOWS = 14
"""Final windows of the series the reproducing query lists, up to the breach's window:
enough for the consecutive windows of a hysteresis rule and a CUSUM rule's recent path."""


class AlertmanagerError(ImgovError):
    """A post to Alertmanager failed: it could not be reached, or it refused the alerts."""


# ---------------------------------------------------------------- breach -> alert


def breach_alert_labels(b: Breach) -> dict[str, str]:
    """The label set of ``b``'s alert: the same for its OPEN and its RESOLVED record."""
    return {
        "alertname": ALERTNAME,
        "severity": b.severity.value.lower(),  # Alertmanager's convention: critical, warning
        "rule": b.rule_id,
        "kpi": b.kpi,
        "window": b.window_size,
        "site": b.site_id,
        "algorithm": b.algorithm_name,
        "version": b.algorithm_version,
        "finding": b.finding_code,
        "breach_id": b.breach_id,
        "source": "imgov",
    }


def kpi_series_query(b: Breach) -> str:
    """ClickHouse SQL listing the final KPI values that opened (or resolved) ``b``.

    The last ``SERIES_WINDOWS`` final windows of the breach's series (``kpi_final``, the
    audit view of ``kpi_values``) up to the window named in the record; compare their
    value, interval or p-value with the rule's threshold (``imgov policy show``).
    """
    sql = (
        "SELECT window_start_ms, window_end_ms, numerator, denominator, value, ci_low, ci_high,"
        " p50, p90, p_value, revision FROM kpi_final"
        " WHERE kpi = %(kpi)s AND window_size = %(window)s AND site_id = %(site)s"
        " AND algorithm_name = %(algorithm)s AND algorithm_version = %(version)s"
        " AND finding_code = %(finding)s AND window_end_ms <= %(end)s"
        f" ORDER BY window_start_ms DESC LIMIT {SERIES_WINDOWS}"
    )
    return substitute_params(
        sql,
        {
            "kpi": b.kpi,
            "window": b.window_size,
            "site": b.site_id,
            "algorithm": b.algorithm_name,
            "version": b.algorithm_version,
            "finding": b.finding_code,
            "end": b.window_end_ms,
        },
    )


def breach_rows_query(b: Breach) -> str:
    """ClickHouse SQL listing the audit rows of ``b`` (``kpi_breaches``: OPEN, RESOLVED)."""
    return substitute_params(
        "SELECT breach_id, state, rule_id, kpi, severity, window_size, window_start_ms,"
        " window_end_ms, site_id, algorithm_name, algorithm_version, finding_code, value,"
        " threshold, evidence FROM kpi_breaches FINAL WHERE breach_id = %(id)s ORDER BY state",
        {"id": b.breach_id},
    )


def breach_link(link_base: str, b: Breach) -> str:
    """The link to ``b`` under ``link_base``.

    A base with ``{breach_id}``, ``{rule}``, ``{kpi}``, ``{window}``, ``{site}``,
    ``{algorithm}``, ``{version}`` or ``{finding}`` in it is a template (the values are
    URL-quoted); any other base gets ``/<breach_id>`` appended.
    """
    if "{" not in link_base:
        return f"{link_base.rstrip('/')}/{urllib.parse.quote(b.breach_id, safe='')}"
    labels = breach_alert_labels(b)
    return link_base.format_map({k: urllib.parse.quote(v, safe="") for k, v in labels.items()})


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def breach_alert_annotations(b: Breach, link_base: str | None = None) -> dict[str, str]:
    """The annotations of ``b``'s alert: one-line summary, evidence, how to reproduce it."""
    verb = "opened" if b.state is BreachState.OPEN else "resolved"
    summary = (
        f"{b.severity.value} {b.rule_id} {verb}: {b.kpi} {_number(b.value)}"
        f" (threshold {_number(b.threshold)}), {b.window_size} window to"
        f" {format_utc(b.window_end_ms)}, site {b.site_id}, {b.algorithm_name}"
        f" {b.algorithm_version}, {b.finding_code}"
    )
    annotations = {
        "summary": summary,
        "evidence": b.evidence,
        "query": kpi_series_query(b),
        "breach_query": breach_rows_query(b),
    }
    if b.value is not None:
        annotations["value"] = repr(b.value)
    if b.threshold is not None:
        annotations["threshold"] = repr(b.threshold)
    if link_base:
        annotations["link"] = breach_link(link_base, b)
    return annotations


def parse_link_base(text: str) -> str:
    """Returns ``text`` if it is an http(s) URL (or template, ``breach_link``) with a host.

    Raises:
        ValueError: it is not, or names a field ``breach_link`` does not fill.
    """
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"the link base is not an http(s) URL with a host: {text!r}")
    try:
        text.format_map(dict.fromkeys(ALERT_LABEL_NAMES, ""))
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"the link base is not a valid template: {text!r} ({exc!r})") from exc
    return text.strip()


def rfc3339(ms: int) -> str:
    """``ms`` (Unix milliseconds) as the RFC 3339 UTC time Alertmanager reads."""
    stamp = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_alertmanager_url(text: str) -> str:
    """Returns Alertmanager's base URL (``http[s]://host:port[/prefix]``, no trailing ``/``).

    Raises:
        ValueError: not an http or https URL with a host, or it has a query or fragment.
    """
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the Alertmanager URL takes no query or fragment: {text!r}")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise ValueError(f"bad port in {text!r}: {exc}") from exc
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


# ---------------------------------------------------------------- the book (pure)


@dataclass(slots=True)
class _Firing:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at_ms: int
    next_post_ms: int = 0
    """When to post it next: at once (0) on start, then every resend interval."""


@dataclass(slots=True)
class _Resolution:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at_ms: int
    ends_at_ms: int


@dataclass(frozen=True, slots=True)
class AlertBatch:
    """Alerts to post in one request, and the breaches they stand for.

    Attributes:
        alerts: the request body (a JSON list) of ``POST /api/v2/alerts``.
        firing: ids of the open breaches among them.
        resolved: ids of the resolved breaches among them.
    """

    alerts: tuple[dict[str, Any], ...]
    firing: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()


@dataclass
class BreachAlertBook:
    """Which breaches are open, which resolved, and what Alertmanager must be told when.

    Called by the bridge: ``apply`` for each breach message read, ``due`` then ``posted``
    (or nothing, when the post failed: the same alerts are due again).

    Args:
        resend_interval_ms: how often an open breach's alert is posted again.
        link_base: base URL of the ``link`` annotation and ``generatorURL`` (None: none).
        resolved_capacity: how many resolved breach ids are remembered (oldest forgotten
            first); a redelivery comes soon after the original, so a bounded memory
            catches it.
    """

    resend_interval_ms: int
    link_base: str | None = None
    resolved_capacity: int = 100_000
    _firing: dict[str, _Firing] = field(default_factory=dict, init=False)
    _resolved: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False)
    _to_resolve: dict[str, _Resolution] = field(default_factory=dict, init=False)

    @property
    def ends_after_ms(self) -> int:
        """How far ahead of a post a firing alert ends unless posted again: four resend
        intervals (as Prometheus does), so a late or failed post or two do not resolve it."""
        return 4 * self.resend_interval_ms

    @property
    def open_ids(self) -> frozenset[str]:
        return frozenset(self._firing)

    def is_resolved(self, breach_id: str) -> bool:
        return breach_id in self._resolved

    def apply(self, breach: Breach, at_ms: int) -> bool:
        """Takes one breach message published at ``at_ms``; returns True when it changed
        the book (False: a repeat, or an OPEN of a breach already resolved)."""
        bid = breach.breach_id
        if bid in self._resolved:
            return False
        if breach.state is BreachState.OPEN:
            if bid in self._firing:
                return False
            self._firing[bid] = _Firing(
                breach_alert_labels(breach),
                breach_alert_annotations(breach, self.link_base),
                starts_at_ms=at_ms,
            )
            return True
        opened = self._firing.pop(bid, None)
        starts_at_ms = opened.starts_at_ms if opened is not None else at_ms
        self._to_resolve[bid] = _Resolution(
            # The labels of the alert that fired, so that Alertmanager resolves that one.
            labels=opened.labels if opened is not None else breach_alert_labels(breach),
            annotations=breach_alert_annotations(breach, self.link_base),
            starts_at_ms=starts_at_ms,
            ends_at_ms=max(at_ms, starts_at_ms),
        )
        self._resolved[bid] = None
        if len(self._resolved) > self.resolved_capacity:
            self._resolved.popitem(last=False)
        return True

    def due(self, now_ms: int, limit: int = 500) -> AlertBatch | None:
        """The alerts to post at ``now_ms`` (at most ``limit``), None when there are none:
        every resolution not posted yet, and each open breach whose resend time came."""
        alerts: list[dict[str, Any]] = []
        resolved: list[str] = []
        for bid, r in self._to_resolve.items():
            if len(alerts) >= limit:
                break
            alerts.append(self._alert(r.labels, r.annotations, r.starts_at_ms, r.ends_at_ms))
            resolved.append(bid)
        firing: list[str] = []
        for bid, f in self._firing.items():
            if len(alerts) >= limit:
                break
            if f.next_post_ms <= now_ms:
                ends_at_ms = now_ms + self.ends_after_ms
                alerts.append(self._alert(f.labels, f.annotations, f.starts_at_ms, ends_at_ms))
                firing.append(bid)
        if not alerts:
            return None
        return AlertBatch(tuple(alerts), tuple(firing), tuple(resolved))

    def posted(self, batch: AlertBatch, now_ms: int) -> None:
        """Records that Alertmanager accepted ``batch`` at ``now_ms``."""
        for bid in batch.resolved:
            self._to_resolve.pop(bid, None)
        for bid in batch.firing:
            firing = self._firing.get(bid)
            if firing is not None:
                firing.next_post_ms = now_ms + self.resend_interval_ms

    def _alert(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        starts_at_ms: int,
        ends_at_ms: int,
    ) -> dict[str, Any]:
        alert: dict[str, Any] = {
            "labels": dict(labels),
            "annotations": dict(annotations),
            "startsAt": rfc3339(starts_at_ms),
            "endsAt": rfc3339(ends_at_ms),
        }
        if "link" in annotations:
            alert["generatorURL"] = annotations["link"]
        return alert


# ---------------------------------------------------------------- the runtime


class AlertmanagerClient:
    """Posts alerts to Alertmanager's v2 API (blocking, one request per call).

    Args:
        base_url: ``http[s]://host:port[/prefix]`` (``parse_alertmanager_url``).
        timeout_s: bound on one request.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.url = f"{parse_alertmanager_url(base_url)}/api/v2/alerts"
        self._timeout_s = timeout_s

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Posts ``alerts`` (the body of ``POST /api/v2/alerts``).

        Raises:
            AlertmanagerError: not reached, or it answered other than 200.
        """
        body = json.dumps(list(alerts), ensure_ascii=False).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace").strip()
            raise AlertmanagerError(
                f"Alertmanager at {self.url} refused {len(alerts)} alert(s): {exc.code} {detail}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AlertmanagerError(f"cannot reach Alertmanager at {self.url}: {exc}") from exc


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class BreachAlertBridge:
    """Reads the breach topic from its start into the book and posts what is due.

    Args:
        bootstrap: the brokers.
        topic: the breach topic (namespace applied).
        book: the alert state.
        poster: posts one batch of alerts; raises ``AlertmanagerError``.
        codec: decodes the Breach records.
        metrics: the bridge's metrics.
        clock_ms: wall clock, Unix milliseconds.
        security: TLS and SASL of the consumer (PLAINTEXT when omitted).
    """

    POLL_TIMEOUT_MS = 500
    RETRY_MIN_S = 1.0
    RETRY_MAX_S = 30.0

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        book: BreachAlertBook,
        poster: Callable[[Sequence[Mapping[str, Any]]], None],
        codec: Codec,
        metrics: BridgeMetrics,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        security: KafkaSecurity | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._security = security or KafkaSecurity()
        self._topic = topic
        self._book = book
        self._post = poster
        self._codec = codec
        self._metrics = metrics
        self._clock_ms = clock_ms
        self._consumer: Any = None
        self._replay_end: dict[Any, int] | None = None
        """End offsets at assignment: nothing is posted before the book first reached them."""
        self._caught_up = False
        self._post_retry_s = 0.0
        self._next_post_attempt_ms = 0
        self._next_connect_ms = 0
        self._kafka_failing = False
        self._topic_missing = False

    def run(self, stop: threading.Event) -> None:
        """Runs until ``stop`` is set; Kafka or Alertmanager being down only delays it."""
        try:
            while not stop.is_set():
                if self._ensure_assigned():
                    try:
                        self.read(self._consumer.poll(timeout_ms=self.POLL_TIMEOUT_MS))
                    except KafkaError as exc:
                        log.warning("reading %s failed: %s; reconnecting", self._topic, exc)
                        self._close()
                else:
                    stop.wait(self.POLL_TIMEOUT_MS / 1000)
                # Once the book has caught up, it is posted whatever Kafka does: a
                # reconnection reads the topic again from its start, which changes
                # nothing the book already holds.
                if self._caught_up or (self._replay_end is not None and self._check_caught_up()):
                    self.post_due()
        finally:
            self._close()

    # 1. The breach topic, from its beginning.

    def _ensure_assigned(self) -> bool:
        """Opens the consumer and assigns every partition of the topic, from the start;
        False while the broker or the topic is not there (retried every few seconds)."""
        if self._replay_end is not None:
            return True
        now = self._clock_ms()
        if now < self._next_connect_ms:
            return False
        self._next_connect_ms = now + 5_000
        try:
            if self._consumer is None:
                if not brokers_reachable(self._bootstrap):
                    raise KafkaConnectionError("no broker accepts connections")
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self._bootstrap,
                    client_id="imgov-alerts",
                    group_id=None,  # no group, no commits: see the module docstring
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    bootstrap_timeout_ms=5_000,
                    **self._security.client_options(),
                )
            partitions = self._consumer.partitions_for_topic(self._topic)
            if not partitions:
                (log.debug if self._topic_missing else log.info)(
                    "topic %s not found yet; waiting for it", self._topic
                )
                self._topic_missing = True
                return False
            tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
            self._replay_end = dict(self._consumer.end_offsets(tps, timeout_ms=10_000))
        except KafkaError as exc:
            # Said once per outage, not at every retry.
            (log.debug if self._kafka_failing else log.warning)(
                "cannot read %s from %s: %s; retrying", self._topic, self._bootstrap, exc
            )
            self._kafka_failing = True
            self._close()
            return False
        self._kafka_failing = self._topic_missing = False
        log.info("reading %s from its beginning (%d partitions)", self._topic, len(tps))
        return True

    def _check_caught_up(self) -> bool:
        """True once every partition was read up to its end offset at assignment."""
        assert self._replay_end is not None
        try:
            behind = [
                tp for tp, end in self._replay_end.items() if self._consumer.position(tp) < end
            ]
        except KafkaError:
            return False
        if not behind:
            self._caught_up = True
            log.info("caught up with %s: %d breach(es) open", self._topic, len(self._book.open_ids))
        return self._caught_up

    def read(self, records: Mapping[Any, Sequence[Any]]) -> None:
        """Applies the messages of one poll (kafka-python's ``ConsumerRecord``) to the book."""
        for tp, messages in records.items():
            for i, message in enumerate(messages):
                try:
                    breach = self._codec.decode(message.value, Breach)
                except RegistryUnavailableError as exc:
                    # Not the message's fault: read it again once the registry answers.
                    log.warning("schema registry unavailable (%s); retrying", exc)
                    self._rewind(records, tp, messages[i].offset)
                    time.sleep(self.RETRY_MIN_S)
                    return
                except DecodeError as exc:
                    # A reader cannot dead-letter: the worker wrote it, ClickHouse has it.
                    log.error(
                        "%s[%d]@%d is not a readable breach (%s); skipped",
                        message.topic,
                        message.partition,
                        message.offset,
                        exc,
                    )
                    continue
                self._metrics.breaches.labels(breach.state.value).inc()
                now = self._clock_ms()
                at_ms = message.timestamp if 0 <= message.timestamp <= now else now
                if self._book.apply(breach, at_ms):
                    log.info("breach %s %s (%s)", breach.breach_id, breach.state, breach.rule_id)

    def _rewind(self, records: Mapping[Any, Sequence[Any]], failed_tp: Any, offset: int) -> None:
        """Seeks ``failed_tp`` back to ``offset`` and every partition not yet read this poll
        back to its first message."""
        self._consumer.seek(failed_tp, offset)
        after_failed = False  # the partitions before it were read whole
        for tp, messages in records.items():
            if tp == failed_tp:
                after_failed = True
            elif after_failed and messages:
                self._consumer.seek(tp, messages[0].offset)

    # 2. Alertmanager.

    def post_due(self) -> None:
        """Posts what the book says is due, unless a failed post's backoff is running."""
        now = self._clock_ms()
        if now < self._next_post_attempt_ms:
            return
        batch = self._book.due(now)
        if batch is None:
            return
        try:
            self._post(batch.alerts)
        except AlertmanagerError as exc:
            self._metrics.posts.labels("error").inc()
            self._post_retry_s = min(
                max(self._post_retry_s * 2, self.RETRY_MIN_S), self.RETRY_MAX_S
            )
            self._next_post_attempt_ms = now + int(self._post_retry_s * 1000)
            log.warning("%s; retrying in %.0f s", exc, self._post_retry_s)
            return
        self._book.posted(batch, now)
        self._metrics.posts.labels("ok").inc()
        self._metrics.last_post.set(now / 1000)
        self._post_retry_s = 0.0
        log.debug(
            "posted %d firing and %d resolved alert(s)", len(batch.firing), len(batch.resolved)
        )

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # closing a client of a broker that is gone may fail
                log.debug("closing the consumer failed", exc_info=True)
        self._consumer = None
        self._replay_end = None
