"""Breaches as Alertmanager alerts: the payload, the open/resolved book, the bridge's posts.

No Kafka, no Alertmanager: the book takes a clock as data, the bridge a poster function
and stand-in consumer records. The reproducing queries run on the demo's chDB tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.codec import Codec
from schemas.records import Breach, BreachState, Severity
from schemas.registry import registry_from_environ
from sinks.query import ChdbBackend
from streams.core.kpi.breach import BreachPolicy, RuleKind
from streams.metrics import BridgeMetrics
from streams.replay.demo import DemoRun
from streams.runtime.alerts import (
    ALERT_LABEL_NAMES,
    ALERTNAME,
    AlertBatch,
    AlertmanagerError,
    BreachAlertBook,
    BreachAlertBridge,
    breach_alert_annotations,
    breach_alert_labels,
    breach_link,
    parse_alertmanager_url,
    parse_link_base,
    rfc3339,
)
from tests.unit.conftest import POLICY

MINUTE = 60_000
T0 = 1_800_000_000_000
RESEND = MINUTE


def breach(state: BreachState = BreachState.OPEN, **changes: Any) -> Breach:
    fields: dict[str, Any] = {
        "breach_id": "0f" * 16,
        "rule_id": "alert-ppv-low",
        "kpi": "alert_ppv",
        "severity": Severity.CRITICAL,
        "state": state,
        "window_size": "30d",
        "window_start_ms": T0 - 30 * 1440 * MINUTE,
        "window_end_ms": T0,
        "site_id": "site-02",
        "algorithm_name": "ich-detect",
        "algorithm_version": "*",
        "finding_code": "ICH",
        "value": 0.21,
        "threshold": 0.3,
        "evidence": "opened: upper Wilson bound 0.29 < 0.30 for 3 final windows",
    }
    return Breach(**{**fields, **changes})


# ---------------------------------------------------------------- payload


def test_labels_name_the_rule_and_the_series_and_nothing_else() -> None:
    labels = breach_alert_labels(breach())
    assert tuple(labels) == ALERT_LABEL_NAMES
    assert labels == {
        "alertname": ALERTNAME,
        "severity": "critical",
        "rule": "alert-ppv-low",
        "kpi": "alert_ppv",
        "window": "30d",
        "site": "site-02",
        "algorithm": "ich-detect",
        "version": "*",
        "finding": "ICH",
        "breach_id": "0f" * 16,
        "source": "imgov",
    }
    assert breach_alert_labels(breach(severity=Severity.WARNING))["severity"] == "warning"
    # No study, patient, accession, report or event identifier can reach a label.
    assert not {n for n in ALERT_LABEL_NAMES if any(w in n for w in ("study", "patient", "uid"))}


def test_a_resolution_has_the_labels_of_the_alert_it_resolves() -> None:
    resolved = breach(
        BreachState.RESOLVED, window_start_ms=T0, window_end_ms=T0 + 1440 * MINUTE, value=0.4
    )
    assert breach_alert_labels(resolved) == breach_alert_labels(breach())


def test_annotations_give_evidence_and_how_to_reproduce_it() -> None:
    b = breach()
    annotations = breach_alert_annotations(b)
    assert set(annotations) == {
        "summary",
        "evidence",
        "query",
        "breach_query",
        "value",
        "threshold",
    }
    assert "\n" not in annotations["summary"]
    for part in ("CRITICAL", "alert-ppv-low", "opened", "0.21", "0.3", "site-02", "ICH"):
        assert part in annotations["summary"]
    assert annotations["evidence"] == b.evidence
    assert float(annotations["value"]) == b.value
    assert float(annotations["threshold"]) == b.threshold
    assert f"breach_id = '{b.breach_id}'" in annotations["breach_query"]
    assert "FROM kpi_final" in annotations["query"]
    assert f"window_end_ms <= {b.window_end_ms}" in annotations["query"]
    resolved = breach_alert_annotations(breach(BreachState.RESOLVED, value=None))
    assert "resolved" in resolved["summary"]
    assert "value" not in resolved


def test_query_literals_are_escaped() -> None:
    annotations = breach_alert_annotations(breach(site_id="o'hare\\x"))
    assert "site_id = 'o\\'hare\\\\x'" in annotations["query"]


def test_a_link_is_added_only_with_a_base() -> None:
    b = breach(breach_id="a/b c")
    assert "link" not in breach_alert_annotations(b)
    assert (
        breach_link("https://gov.example/breaches/", b) == "https://gov.example/breaches/a%2Fb%20c"
    )
    template = "https://grafana.example/d/imgov?var-breach={breach_id}&var-site={site}"
    assert breach_link(template, b) == (
        "https://grafana.example/d/imgov?var-breach=a%2Fb%20c&var-site=site-02"
    )
    assert breach_alert_annotations(b, template)["link"] == breach_link(template, b)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:19094", "http://127.0.0.1:19094"),
        ("http://127.0.0.1:19094/", "http://127.0.0.1:19094"),
        (" https://am.example/alertmanager/ ", "https://am.example/alertmanager"),
    ],
)
def test_alertmanager_url_is_normalised(text: str, expected: str) -> None:
    assert parse_alertmanager_url(text) == expected


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:9093", "ftp://host", "http://", "http://h:99999", "http://h:1/?x=1", "http://h#f"],
)
def test_bad_alertmanager_urls_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_alertmanager_url(text)


@pytest.mark.parametrize("text", ["gov.example/x", "http://h/{nope}", "http://h/{breach_id"])
def test_bad_link_bases_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_link_base(text)


def test_times_are_rfc3339_utc_to_the_millisecond() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_800_000_000_123) == "2027-01-15T08:00:00.123Z"


# ---------------------------------------------------------------- the book


def only(batch: AlertBatch | None) -> dict[str, Any]:
    assert batch is not None and len(batch.alerts) == 1
    return batch.alerts[0]


def test_an_open_breach_is_posted_at_once_then_every_resend_interval() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND)
    assert book.apply(breach(), at_ms=T0)
    first = book.due(T0 + 5)
    alert = only(first)
    assert alert["labels"] == breach_alert_labels(breach())
    assert alert["startsAt"] == rfc3339(T0)
    assert alert["endsAt"] == rfc3339(T0 + 5 + 4 * RESEND)  # ends by itself if not re-posted
    assert "generatorURL" not in alert
    json.dumps(first.alerts if first else None)  # the request body is JSON
    assert first is not None and first.firing == (breach().breach_id,)

    book.posted(first, T0 + 5)
    assert book.due(T0 + 5 + RESEND - 1) is None
    again = only(book.due(T0 + 5 + RESEND))
    assert again["startsAt"] == alert["startsAt"]  # the same alert, extended
    assert again["endsAt"] == rfc3339(T0 + 5 + 5 * RESEND)


def test_a_failed_post_leaves_the_alerts_due() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND)
    book.apply(breach(), at_ms=T0)
    book.apply(breach(BreachState.RESOLVED, breach_id="1" * 32), at_ms=T0)
    failed = book.due(T0)
    assert failed is not None and len(failed.alerts) == 2
    retried = book.due(T0 + 3_000)  # nothing was posted: both are still due
    assert retried is not None and (retried.firing, retried.resolved) == (
        failed.firing,
        failed.resolved,
    )


def test_a_redelivered_open_is_ignored() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND)
    assert book.apply(breach(), at_ms=T0)
    book.posted(book.due(T0) or AlertBatch(()), T0)
    assert not book.apply(breach(), at_ms=T0 + 10)
    assert book.due(T0 + 10) is None  # no second alert, no early re-post
    assert book.open_ids == {breach().breach_id}


def test_a_resolution_is_posted_once_and_stays_resolved() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND)
    book.apply(breach(), at_ms=T0)
    book.posted(book.due(T0) or AlertBatch(()), T0)
    resolved = breach(BreachState.RESOLVED, value=0.42, evidence="resolved: 0.42 for 3 windows")
    assert book.apply(resolved, at_ms=T0 + 7 * MINUTE)
    batch = book.due(T0 + 7 * MINUTE + 20)
    alert = only(batch)
    assert alert["labels"] == breach_alert_labels(breach())
    assert alert["startsAt"] == rfc3339(T0)
    assert alert["endsAt"] == rfc3339(T0 + 7 * MINUTE)
    assert alert["annotations"]["evidence"] == "resolved: 0.42 for 3 windows"
    assert batch is not None and batch.resolved == (breach().breach_id,) and not batch.firing
    book.posted(batch, T0 + 7 * MINUTE + 20)
    assert book.due(T0 + 60 * MINUTE) is None
    assert book.open_ids == frozenset() and book.is_resolved(breach().breach_id)

    # A worker that crashed publishes both again: neither reopens nor re-resolves it.
    assert not book.apply(breach(), at_ms=T0 + 61 * MINUTE)
    assert not book.apply(resolved, at_ms=T0 + 61 * MINUTE)
    assert book.due(T0 + 62 * MINUTE) is None


def test_a_resolution_without_its_opening_is_still_posted() -> None:
    # The OPEN aged out of the topic (retention) while its alert may still be known.
    book = BreachAlertBook(resend_interval_ms=RESEND)
    book.apply(breach(BreachState.RESOLVED), at_ms=T0)
    alert = only(book.due(T0 + 1))
    assert alert["startsAt"] == alert["endsAt"] == rfc3339(T0)


def test_the_resolved_ids_are_bounded() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND, resolved_capacity=2)
    for i in range(3):
        book.apply(breach(BreachState.RESOLVED, breach_id=f"{i:032d}"), at_ms=T0)
    assert not book.is_resolved(f"{0:032d}")
    assert book.is_resolved(f"{1:032d}") and book.is_resolved(f"{2:032d}")
    batch = book.due(T0)
    assert batch is not None and len(batch.resolved) == 3  # forgetting loses no post


def test_a_batch_holds_at_most_the_limit() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND)
    for i in range(5):
        book.apply(breach(breach_id=f"{i:032d}"), at_ms=T0)
    first = book.due(T0, limit=3)
    assert first is not None and len(first.alerts) == 3
    book.posted(first, T0)
    rest = book.due(T0, limit=3)
    assert rest is not None and len(rest.firing) == 2
    assert set(rest.firing).isdisjoint(first.firing)


def test_the_link_becomes_the_generator_url() -> None:
    book = BreachAlertBook(resend_interval_ms=RESEND, link_base="https://gov.example/b")
    book.apply(breach(), at_ms=T0)
    alert = only(book.due(T0))
    assert alert["generatorURL"] == alert["annotations"]["link"]
    assert alert["generatorURL"] == f"https://gov.example/b/{breach().breach_id}"


# ---------------------------------------------------------------- the queries


def test_the_queries_reproduce_the_demo_breaches(small_demo: DemoRun) -> None:
    kinds = {rule.id: rule.kind for rule in BreachPolicy.from_toml(POLICY.read_text()).rules}
    path: Path = small_demo.options.outputs_path / "breach.jsonl"
    breaches = [Breach.model_validate_json(line) for line in path.read_text().splitlines()]
    assert {b.state for b in breaches} == {BreachState.OPEN, BreachState.RESOLVED}
    backend = ChdbBackend(small_demo.options.chdb_path)
    try:
        for b in breaches:
            annotations = breach_alert_annotations(b)
            columns, rows = backend.execute(annotations["breach_query"])
            states = {dict(zip(columns, row, strict=True))["state"] for row in rows}
            expected = {x.state.value for x in breaches if x.breach_id == b.breach_id}
            assert states == expected, b.rule_id

            columns, rows = backend.execute(annotations["query"])
            assert 0 < len(rows) <= 14
            latest = dict(zip(columns, rows[0], strict=True))
            # The window the record names comes first: the one that opened or resolved it.
            assert (latest["window_start_ms"], latest["window_end_ms"]) == (
                b.window_start_ms,
                b.window_end_ms,
            )
            if kinds[b.rule_id] is not RuleKind.CUSUM:  # a CUSUM's value is its statistic
                assert latest["value"] == pytest.approx(b.value)
    finally:
        backend.close()


# ---------------------------------------------------------------- the bridge's posts


class Poster:
    """Alertmanager as the bridge sees it: takes a batch, or raises while down."""

    def __init__(self) -> None:
        self.down = False
        self.bodies: list[list[dict[str, Any]]] = []

    def __call__(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        if self.down:
            raise AlertmanagerError("cannot reach Alertmanager: connection refused")
        self.bodies.append([dict(a) for a in alerts])


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def codec() -> Codec:
    return Codec(registry_from_environ({}))


@pytest.fixture
def parts(codec: Codec) -> Iterator[tuple[BreachAlertBridge, Poster, Clock, BridgeMetrics]]:
    poster, clock = Poster(), Clock(T0)
    metrics = BridgeMetrics(CollectorRegistry())
    bridge = BreachAlertBridge(
        bootstrap="127.0.0.1:1",  # never connected: read and post_due are driven directly
        topic="governance.breach.v1",
        book=BreachAlertBook(resend_interval_ms=RESEND),
        poster=poster,
        codec=codec,
        metrics=metrics,
        clock_ms=clock,
    )
    yield bridge, poster, clock, metrics


def record(codec: Codec, b: Breach, offset: int, timestamp: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic="governance.breach.v1",
        partition=0,
        offset=offset,
        timestamp=timestamp,
        value=codec.encode(b),
    )


def sample(metrics: BridgeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_alertmanager_down_loses_nothing(
    parts: tuple[BreachAlertBridge, Poster, Clock, BridgeMetrics], codec: Codec
) -> None:
    bridge, poster, clock, metrics = parts
    poster.down = True
    bridge.read({"tp": [record(codec, breach(), 0, T0 - 2_000)]})
    bridge.post_due()
    bridge.post_due()  # within the backoff: not tried again
    assert sample(metrics, "imgov_alerts_posts_total", outcome="error") == 1
    clock.now_ms += 1_000
    bridge.read({"tp": [record(codec, breach(BreachState.RESOLVED), 1, T0 + 500)]})
    bridge.post_due()
    assert sample(metrics, "imgov_alerts_posts_total", outcome="error") == 2

    poster.down = False
    clock.now_ms += 2_000  # the backoff doubled to 2 s
    bridge.post_due()
    assert sample(metrics, "imgov_alerts_posts_total", outcome="ok") == 1
    assert sample(metrics, "imgov_alerts_last_post_timestamp_seconds") == clock.now_ms / 1000
    (body,) = poster.bodies
    (alert,) = body  # the resolution, with the times the messages carry
    assert (alert["startsAt"], alert["endsAt"]) == (rfc3339(T0 - 2_000), rfc3339(T0 + 500))
    assert sample(metrics, "imgov_alerts_breaches_total", state="OPEN") == 1
    assert sample(metrics, "imgov_alerts_breaches_total", state="RESOLVED") == 1


def test_an_unreadable_message_is_skipped(
    parts: tuple[BreachAlertBridge, Poster, Clock, BridgeMetrics], codec: Codec
) -> None:
    bridge, poster, _, _ = parts
    garbage = SimpleNamespace(
        topic="governance.breach.v1", partition=0, offset=0, timestamp=T0, value=b"\x00junk"
    )
    # A timestamp from the future (a producer's clock ahead) is taken as now.
    bridge.read({"tp": [garbage, record(codec, breach(), 1, T0 + 3_600_000)]})
    bridge.post_due()
    (body,) = poster.bodies
    assert [a["startsAt"] for a in body] == [rfc3339(T0)]
