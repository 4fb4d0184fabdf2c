"""Operating the live pipeline: a real worker and `imgov alerts` bridge, scraped by the
real Prometheus, with the shipped alert rules (DESIGN §12, issue 15).

One module-scoped run: a worker reads a month of simulated history (with some bad
messages) into ClickHouse while Prometheus scrapes it and the bridge. The tests then
read what the processes serve and what Prometheus makes of it; the last one stops the
worker under load and watches the lag alert fire, then clear once a new worker caught
up. The rules are the shipped ones with every duration divided by 60 (10 min -> 10 s,
``prometheus_service.scaled_rules``); ``infra/prometheus/tests`` checks the real
durations with ``promtool test rules``.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import BridgeMetrics, WorkerMetrics
from streams.paths import REPO_ROOT
from tests.integration import prometheus_service as prom
from tests.integration.test_live_harness import (
    IMGOV,
    LiveEnv,
    RateProducer,
    ch_client,
    encoded,
    free_port,
    opened,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

SCALE = 1 / 60
"""Rule durations in this module: 10 minutes -> 10 s, 5 minutes -> 5 s, 1 minute -> 1 s."""

BAD_MESSAGES = 12


@dataclass
class Ops:
    env: LiveEnv
    bridge_port: int
    later: list[tuple[str, bytes | None, bytes]]
    """Input kept for the load of the lag test."""
    identifiers: set[str]
    """Every identifier-like value of the input (ids, UIDs, names)."""


def _scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """``{family: [(sample name, labels, value)]}`` of a /metrics page."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def _shipped_alerts_scaled() -> str:
    """The shipped alert rules, durations scaled, under group names of their own (the
    recording rules are left to the shipped file, which Prometheus has loaded)."""
    text = prom.scaled_rules((prom.RULES_DIR / "imgov.yml").read_text(), SCALE)
    groups = yaml.safe_load(text)["groups"]
    kept = []
    for group in groups:
        rules = [r for r in group["rules"] if "alert" in r]
        if rules:
            kept.append({**group, "name": group["name"] + "-scaled", "rules": rules})
    return yaml.safe_dump({"groups": kept}, sort_keys=False)


@pytest.fixture(scope="module")
def ops(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    prom.require_monitoring()
    tmp = tmp_path_factory.mktemp("ops")
    with opened(LiveEnv(kafka_bootstrap, tmp)) as env:
        events = simulate(tmp / "events.jsonl", days=31, sites=2, per_day=30, seed=41)
        identifiers = {
            value
            for event in events
            for value in event.model_dump().values()
            if isinstance(value, str) and len(value) >= 4
        }
        messages = encoded(events, env.topics)
        first, later = messages[:2_000], messages[2_000:]
        bad = [(env.topics.inference, b"bad", b"not an event") for _ in range(BAD_MESSAGES)]
        produce(env.bootstrap, first[:1_000] + bad + first[1_000:])

        bridge_port = free_port()
        bridge_log = (tmp / "bridge.log").open("ab")
        bridge = subprocess.Popen(
            [
                IMGOV, "alerts", "--alertmanager", prom.ALERTMANAGER_URL,
                "--namespace", env.namespace, "--group", env.app_id,
                "--metrics-port", str(bridge_port), "--lag-interval", "1",
            ],
            cwd=REPO_ROOT, env=env.worker_env("bridge"), stdout=bridge_log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker_at = f"127.0.0.1:{env.metrics_port('w1')}"
        bridge_at = f"127.0.0.1:{bridge_port}"
        labels = {"test": env.suffix}
        try:
            with (
                prom.scrape_target("imgov-worker", worker_at, labels),
                prom.scrape_target("imgov-alerts", bridge_at, labels),
            ):
                env.start_worker("w1")
                _wait_caught_up(env)
                yield Ops(env, bridge_port, later, identifiers)
        finally:
            bridge.terminate()
            bridge.wait(30)
            bridge_log.close()


def _wait_caught_up(env: LiveEnv, timeout_s: float = 180) -> None:
    """Until the group committed every input and contribution, the worker's metrics say
    so, and both stages have a watermark (sooner than ``wait_until_settled``, which also
    waits out the idle close)."""

    def caught_up() -> bool:
        env.assert_alive()
        try:
            served = _scrape(env.metrics_url("w1"))
        except OSError:  # not serving yet
            return False
        stages = {labels["stage"] for _, labels, _ in served["imgov_watermark_lag_seconds"]}
        # The worker's own lag gauge is sampled every 2 s: it reaches 0 after the group's.
        sampled = [v for _, _, v in served["imgov_consumer_lag_messages"]]
        return (
            stages == {"lineage", "kpi"}
            and env.group_lag() == 0
            and bool(sampled)
            and not any(sampled)
        )

    prom.wait_for(caught_up, timeout=timeout_s, interval=1, what="the worker to catch up")


def test_the_worker_serves_every_metric_of_the_catalogue(ops: Ops) -> None:
    served = _scrape(ops.env.metrics_url("w1"))
    catalogue = {family.name for family in WorkerMetrics().registry.collect()}
    assert catalogue <= set(served), catalogue - set(served)
    # Families that stay empty until their first event: no ClickHouse error happened,
    # and no breach has opened yet in the first days (see the lag test for one).
    quiet = {"imgov_clickhouse_errors", "imgov_breaches_open"}
    empty = {name for name in catalogue - quiet if not served[name]}
    assert not empty, empty
    values = {(name, tuple(sorted(labels.items()))): v for name, labels, v in _all(served)}
    reasons = {
        labels["reason"]: v
        for name, labels, v in served["imgov_dead_letters"]
        if name.endswith("_total")
    }
    assert reasons.get("UNDECODABLE") == BAD_MESSAGES
    assert values[("imgov_sink_backpressure", (("sink", "lineage"),))] == 0
    assert all(v == 0 for n, _, v in served["imgov_consumer_lag_messages"]), "settled: no lag"
    stages = {labels["stage"] for _, labels, _ in served["imgov_watermark_lag_seconds"]}
    assert stages == {"lineage", "kpi"}
    assert _open_breaches(served) == _open_breaches_in_clickhouse(ops.env)


def _open_breaches(served: dict[str, list[tuple[str, dict[str, str], float]]]) -> dict:
    """``{(severity, rule): n}`` of the worker's gauge, zeros left out."""
    return {
        (labels["severity"], labels["rule"]): v
        for _, labels, v in served["imgov_breaches_open"]
        if v
    }


def _open_breaches_in_clickhouse(env: LiveEnv) -> dict:
    client = ch_client(env.database)
    try:
        rows = client.execute(
            "SELECT severity, rule_id, count() FROM breaches_open GROUP BY severity, rule_id"
        )
    finally:
        client.disconnect()
    return {(severity, rule): float(n) for severity, rule, n in rows}


def _all(
    served: dict[str, list[tuple[str, dict[str, str], float]]],
) -> Iterator[tuple[str, dict[str, str], float]]:
    for samples in served.values():
        yield from samples


def test_no_label_carries_an_identifier(ops: Ops) -> None:
    labels = {
        value
        for url in (ops.env.metrics_url("w1"), f"http://127.0.0.1:{ops.bridge_port}/metrics")
        for _, sample_labels, _ in _all(_scrape(url))
        for value in sample_labels.values()
    }
    assert ops.env.topics.inference in labels  # the labels were read at all
    long_ids = {i for i in ops.identifiers if len(i) >= 8}
    assert not labels & ops.identifiers
    assert not [(label, i) for label in labels for i in long_ids if i in label]


def test_prometheus_scrapes_the_worker_and_the_bridge(ops: Ops) -> None:
    worker_at = f"127.0.0.1:{ops.env.metrics_port('w1')}"
    prom.wait_for_target("imgov-worker", worker_at)
    prom.wait_for_target("imgov-alerts", f"127.0.0.1:{ops.bridge_port}")
    group = ops.env.app_id

    def consumed() -> float:
        result = prom.query(f'sum(imgov_input_messages_total{{instance="{worker_at}"}})')
        return float(result[0]["value"][1]) if result else 0.0

    prom.wait_for(lambda: consumed() >= 2_000, timeout=30, what="input counted")

    def recorded_lag() -> list[float]:
        result = prom.query(f'imgov:group_lag_messages:sum{{group="{group}"}}')
        return [float(r["value"][1]) for r in result]

    # The bridge's broker-side lag, recorded by the shipped rule, reaches 0 as the
    # worker commits (watermark records keep arriving on the contributions topic).
    prom.wait_for(lambda: recorded_lag() == [0.0], timeout=30, what="the recorded lag at 0")
    unhealthy = [
        (group["name"], rule["name"], rule.get("lastError"))
        for group in prom.rule_groups()
        for rule in group["rules"]
        if rule["health"] not in ("ok", "unknown")
    ]
    assert not unhealthy
    bridge = {family.name for family in BridgeMetrics().registry.collect()}
    served = _scrape(f"http://127.0.0.1:{ops.bridge_port}/metrics")
    assert bridge <= set(served)


def _firing(alertname: str, **labels: str) -> list[dict[str, object]]:
    return [
        a
        for a in prom.alerts("firing")
        if a["labels"].get("alertname") == alertname
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def _active(alertname: str, **labels: str) -> list[dict[str, object]]:
    return [
        a
        for a in prom.alerts()
        if a["labels"].get("alertname") == alertname
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def test_the_lag_alert_fires_when_the_worker_stops_under_load_and_clears_after(
    ops: Ops,
) -> None:
    group, env = ops.env.app_id, ops.env
    worker_at = f"127.0.0.1:{env.metrics_port('w1')}"
    prom.load_rules(_shipped_alerts_scaled(), name=f"scaled-{env.suffix}")
    try:
        assert not _active("ImgovConsumerLagGrowing", group=group)
        producer = RateProducer(env.bootstrap, ops.later, rate=150)
        producer.start()
        # Whether a worker that keeps up stays quiet is for promtool's tests at the
        # real durations: scaled down 60 times, the rule's 10 s window is as short as
        # the worker's commit cycle, so its lag's saw-tooth can make the rule pending.

        stopped = time.monotonic()
        env.stop_worker("w1")
        prom.wait_for(
            lambda: _firing("ImgovConsumerLagGrowing", group=group),
            timeout=60,
            what="the lag alert to fire",
        )
        fired_s = time.monotonic() - stopped
        prom.wait_for(
            lambda: _firing("ImgovWorkerDown", instance=worker_at),
            timeout=30,
            what="the worker-down alert to fire",
        )

        restarted = time.monotonic()
        env.start_worker("w1")
        producer.finish(timeout_s=120)
        prom.wait_for(
            lambda: (
                not _active("ImgovConsumerLagGrowing", group=group)
                and not _active("ImgovWorkerDown", instance=worker_at)
            ),
            timeout=90,
            what="the lag and worker-down alerts to clear",
        )
        cleared_s = time.monotonic() - restarted
        assert env.group_lag() == 0 or prom.query(
            f'imgov:group_lag_messages:sum{{group="{group}"}} < 100'
        )
        print(f"lag alert fired {fired_s:.1f} s after the stop, cleared {cleared_s:.1f} s after")
    finally:
        prom.unload_rules(f"scaled-{env.suffix}")
