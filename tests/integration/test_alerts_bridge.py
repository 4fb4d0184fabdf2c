"""``imgov alerts`` against the real broker and the real Alertmanager.

Breaches are encoded and keyed exactly as the worker publishes them
(``OutputEncoder.breaches``) on a namespaced breach topic; the bridge runs as a
subprocess. The test follows one breach through opening, a redelivery, resolution, a
redelivery after it, and a restart of the bridge; and reads the consumer-group lag the
bridge exports for a group that committed less than the end of its topic.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import CoordinatorNotAvailableError
from kafka.structs import OffsetAndMetadata
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import Codec
from schemas.records import Breach, BreachState, Severity
from schemas.registry import registry_from_environ
from streams.paths import REPO_ROOT
from streams.runtime.alerts import ALERT_LABEL_NAMES, ALERTNAME
from streams.runtime.outputs import OutputEncoder
from streams.runtime.topic_admin import create_topics, load_topics
from streams.topics import BREACH_TOPIC, WorkerTopics
from tests.integration.prometheus_service import (
    ALERTMANAGER_URL,
    alertmanager_alerts,
    require_monitoring,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

IMGOV = str(Path(sys.executable).parent / "imgov")
RESEND_S = 2
DAY_MS = 86_400_000


@pytest.fixture
def alertmanager() -> str:
    """The Alertmanager that ``infra/prometheus/prometheus.sh`` runs (started if needed)."""
    require_monitoring()
    return ALERTMANAGER_URL


@pytest.fixture
def breach_topics(kafka_bootstrap: str) -> Iterator[WorkerTopics]:
    """A namespace whose breach topic exists with the settings of topics.toml."""
    topics = WorkerTopics.with_namespace(f"italerts{uuid.uuid4().hex[:10]}.")
    spec = load_topics().get(BREACH_TOPIC).model_copy(update={"name": topics.breach})
    create_topics(kafka_bootstrap, [spec])
    yield topics
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([topics.breach])
    except Exception:  # best effort: a leftover test topic harms nobody
        pass
    finally:
        admin.close()


class Bridge:
    """One ``imgov alerts`` subprocess; its stderr goes to a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [IMGOV, "alerts", *args],
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = wait_for(self._port, timeout=30, what="the bridge's metrics port")

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"imgov alerts exited {self.proc.returncode}:\n{self.logs()}")
        found = re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.logs())
        return int(found[-1]) if found else None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"imgov alerts ignored SIGTERM:\n{self.logs()}") from None


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[[list[str]], Bridge]]:
    started: list[Bridge] = []

    def start(args: list[str]) -> Bridge:
        bridge = Bridge(args, tmp_path / f"alerts-{len(started) + 1}.log")
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        if bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait(timeout=10)


def publish(bootstrap: str, topics: WorkerTopics, *breaches: Breach) -> None:
    """Publishes ``breaches`` as the worker does: Avro value, breach-id key, message id."""
    encoder = OutputEncoder(Codec(registry_from_environ(os.environ)), topics)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for m in encoder.breaches(breaches):
            producer.send(m.topic, key=m.key, value=m.value, headers=list(m.headers))
        producer.flush(timeout=10)
    finally:
        producer.close()


def lagging_group(bootstrap: str, topic: str, group: str) -> int:
    """Gives ``group`` a committed offset on ``topic`` behind its end; returns the lag."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for i in range(3):
            producer.send(topic, key=b"k", value=f"before {i}".encode())
        producer.flush(timeout=10)
        # On a fresh broker the first group call creates __consumer_offsets, and the
        # coordinator is "not available" until that topic is ready (seen in CI).
        deadline = time.monotonic() + 30
        while True:
            try:
                done = admin.alter_group_offsets(
                    group, {TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)}
                )
                break
            except CoordinatorNotAvailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert all(error.__name__ == "NoError" for error in done.values()), done
        for i in range(2):
            producer.send(topic, key=b"k", value=f"after {i}".encode())
        producer.flush(timeout=10)
    finally:
        producer.close()
        admin.close()
    return 5 - 1


def test_breaches_open_and_resolve_in_alertmanager_once(
    kafka_bootstrap: str,
    alertmanager: str,
    breach_topics: WorkerTopics,
    kafka_topic_factory: Callable[..., str],
    start_bridge: Callable[[list[str]], Bridge],
) -> None:
    suffix = uuid.uuid4().hex[:10]
    opened = Breach(
        breach_id=uuid.uuid4().hex,
        rule_id=f"it-alerts-{suffix}",
        kpi="alert_ppv",
        severity=Severity.CRITICAL,
        state=BreachState.OPEN,
        window_size="30d",
        window_start_ms=1_767_916_800_000,
        window_end_ms=1_767_916_800_000 + 30 * DAY_MS,
        site_id="site-02",
        algorithm_name="ich-detect",
        algorithm_version="*",
        finding_code="ICH",
        value=0.2099,
        threshold=0.3,
        evidence="opened: upper Wilson bound 0.28 below 0.30 for 3 consecutive final windows",
    )
    resolved = opened.model_copy(
        update={"state": BreachState.RESOLVED, "value": 0.41, "evidence": "resolved: 0.41"}
    )
    lag_topic = kafka_topic_factory("italerts-lag")
    group = f"it-alerts-lag-{suffix}"
    expected_lag = lagging_group(kafka_bootstrap, lag_topic, group)

    args = [
        "--alertmanager",
        alertmanager,
        "--bootstrap",
        kafka_bootstrap,
        "--namespace",
        breach_topics.breach.removesuffix(BREACH_TOPIC),
        "--group",
        group,
        "--group",
        f"it-alerts-no-such-group-{suffix}",
        "--metrics-port",
        "0",
        "--resend-interval",
        str(RESEND_S),
        "--lag-interval",
        "1",
        "--link-base",
        "http://127.0.0.1:3000/breaches",
    ]
    mine = {"breach_id": opened.breach_id}

    # 1. An OPEN breach becomes one active alert with the labels and annotations.
    publish(kafka_bootstrap, breach_topics, opened)
    bridge = start_bridge(args)
    (alert,) = wait_for(lambda: alertmanager_alerts(mine), timeout=30, what="the alert")
    labels = alert["labels"]
    assert set(labels) == set(ALERT_LABEL_NAMES)
    assert labels["alertname"] == ALERTNAME and labels["severity"] == "critical"
    assert (labels["rule"], labels["site"], labels["algorithm"], labels["version"]) == (
        opened.rule_id,
        "site-02",
        "ich-detect",
        "*",
    )
    assert alert["status"]["state"] == "active"
    annotations = alert["annotations"]
    assert annotations["evidence"] == opened.evidence
    assert opened.breach_id in annotations["breach_query"]
    assert "FROM kpi_final" in annotations["query"]
    assert annotations["link"] == f"http://127.0.0.1:3000/breaches/{opened.breach_id}"
    assert alert["generatorURL"] == annotations["link"]
    starts_at = alert["startsAt"]

    # 2. The worker publishes it again (a redelivery): still one alert, the same one.
    publish(kafka_bootstrap, breach_topics, opened)
    wait_for(
        lambda: bridge.sample("imgov_alerts_breaches_total", state="OPEN") == 2,
        timeout=15,
        what="the bridge to read the repeat",
    )
    posts = bridge.sample("imgov_alerts_posts_total", outcome="ok") or 0
    wait_for(  # and a resend of the open alert went out since
        lambda: (bridge.sample("imgov_alerts_posts_total", outcome="ok") or 0) > posts,
        timeout=RESEND_S * 3,
        what="a resend",
    )
    (again,) = alertmanager_alerts(mine)
    assert again["startsAt"] == starts_at and again["fingerprint"] == alert["fingerprint"]

    # 3. The consumer-group lag, from the brokers: the test group only.
    lag = wait_for(
        lambda: bridge.sample(
            "imgov_group_lag_messages", group=group, topic=lag_topic, partition="0"
        ),
        timeout=15,
        what="the group's lag",
    )
    assert lag == expected_lag
    assert (
        bridge.sample("imgov_group_committed_offset", group=group, topic=lag_topic, partition="0")
        == 1
    )
    assert not [
        key for key in bridge.metrics() if ("group", f"it-alerts-no-such-group-{suffix}") in key[1]
    ]

    # 4. RESOLVED ends the alert; an OPEN redelivered after it does not reopen it.
    publish(kafka_bootstrap, breach_topics, resolved, opened)
    wait_for(
        lambda: bridge.sample("imgov_alerts_breaches_total", state="OPEN") == 3,
        timeout=15,
        what="the bridge to read the resolution and the late repeat",
    )
    wait_for(lambda: alertmanager_alerts(mine) == [], timeout=15, what="the alert to end")
    assert bridge.stop() == 0

    # 5. A restart reads the topic again: the breach stays resolved.
    restarted = start_bridge(args)
    wait_for(
        lambda: (restarted.sample("imgov_alerts_posts_total", outcome="ok") or 0) >= 1,
        timeout=30,
        what="the restarted bridge's first post",
    )
    assert restarted.sample("imgov_alerts_breaches_total", state="RESOLVED") == 1
    assert alertmanager_alerts(mine) == []
    assert alertmanager_alerts(mine, include_suppressed=True) == []
    assert "caught up" in restarted.logs() and "0 breach(es) open" in restarted.logs()
    assert restarted.stop() == 0
