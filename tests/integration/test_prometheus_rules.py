"""infra/prometheus against the real tools: promtool checks and unit tests of the rules,
then a running Prometheus and Alertmanager (infra/prometheus/prometheus.sh) that load the
rules, scrape a real metrics endpoint through file_sd and deliver an alert.

Locally, a missing promtool or a Prometheus that cannot start skips; in CI (CI=true) it
fails.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import BridgeMetrics, serve_metrics
from tests.integration import prometheus_service as mon

PROMETHEUS_DIR = mon.PROMETHEUS_SCRIPT.parent
RULE_FILES = sorted(mon.RULES_DIR.glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def _run(*args: str | Path) -> str:
    """Runs a tool; fails the test with its whole output when it fails."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}")
    return output


# --- static checks (promtool, amtool) ---------------------------------------------------


def test_rule_files_pass_promtool_check_rules() -> None:
    assert RULE_FILES, f"no rule files in {mon.RULES_DIR}"
    _run(mon.require_tool("promtool"), "check", "rules", *RULE_FILES)


def test_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS, f"no promtool tests in {PROMETHEUS_DIR / 'tests'}"
    output = _run(mon.require_tool("promtool"), "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_alert_has_a_promtool_test_where_it_fires() -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {
        rule["alert"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts - tested == set()


def test_every_alert_has_severity_and_annotations() -> None:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
                    assert set(rule["annotations"]) >= {"summary", "description", "runbook"}


def test_scaled_rules_are_valid(tmp_path: Path) -> None:
    for path in RULE_FILES:
        scaled = tmp_path / path.name
        scaled.write_text(mon.scaled_rules(path.read_text(), 1 / 60))
        _run(mon.require_tool("promtool"), "check", "rules", scaled)


def test_shipped_prometheus_config_passes_promtool_check_config() -> None:
    # Relative rule and target paths resolve next to the file, as for a user running it.
    _run(mon.require_tool("promtool"), "check", "config", PROMETHEUS_DIR / "prometheus.yml")


def test_alertmanager_config_passes_amtool() -> None:
    _run(mon.require_tool("amtool"), "check-config", PROMETHEUS_DIR / "alertmanager.yml")


# --- the running services ---------------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring() -> None:
    """Prometheus and Alertmanager, started by the script if they are not running."""
    mon.require_monitoring()


def test_rendered_config_passes_promtool_check_config(monitoring: None) -> None:
    output = _run(mon.require_tool("promtool"), "check", "config", mon.RENDERED_CONFIG)
    assert str(mon.RULES_DIR) in output  # the shipped rules are among those checked


def test_prometheus_has_loaded_the_rule_groups(monitoring: None) -> None:
    expected = {
        (group["name"], rule.get("alert") or rule["record"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    loaded = mon.rule_groups()
    shipped = [g for g in loaded if Path(g["file"]).parent == mon.RULES_DIR]
    assert {(g["name"], r["name"]) for g in shipped for r in g["rules"]} == expected
    # health is "unknown" until the first evaluation, "err" on a failed evaluation
    assert [
        (r["name"], r.get("lastError")) for g in shipped for r in g["rules"] if r["health"] == "err"
    ] == []


def test_alertmanager_is_ready_without_clustering(monitoring: None) -> None:
    status = mon.alertmanager_status()
    assert status["cluster"]["status"] == "disabled"
    assert "receiver: default" in status["config"]["original"]


@pytest.fixture
def bridge_endpoint() -> Iterator[tuple[BridgeMetrics, str]]:
    """A real metrics endpoint (``imgov alerts``'s metrics) on a free port."""
    metrics = BridgeMetrics()
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    yield metrics, f"127.0.0.1:{server.port}"
    server.close()


def test_scrapes_a_file_sd_target_and_records_the_group_lag(
    monitoring: None, bridge_endpoint: tuple[BridgeMetrics, str]
) -> None:
    metrics, address = bridge_endpoint
    group = f"it-{uuid.uuid4().hex[:8]}"
    # Two partitions: the recording rule sums them per group.
    metrics.group_lag.labels(group, "t", "0").set(7)
    metrics.group_lag.labels(group, "t", "1").set(5)
    with mon.scrape_target("imgov-alerts", address, {"test": group}):
        target = mon.wait_for_target("imgov-alerts", address, timeout=30)
        assert target["labels"]["test"] == group

        lag = mon.wait_for(
            lambda: mon.query(f'imgov:group_lag_messages:sum{{group="{group}"}}'),
            timeout=15,
            what="the recording rule over the scraped lag",
        )
        assert [float(s["value"][1]) for s in lag] == [12.0]
        # no target of this test is down, so none of its alerts fires
        assert not [a for a in mon.alerts() if a["labels"].get("instance") == address]
    assert all(address not in g["targets"] for g in _target_groups("imgov-alerts"))


def _target_groups(job: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = json.loads((mon.TARGETS_DIR / f"{job}.json").read_text())
    return groups


def test_a_loaded_rule_fires_and_reaches_alertmanager(monitoring: None) -> None:
    name = f"ImgovItProbe{uuid.uuid4().hex[:8]}"
    rules = f"""
groups:
  - name: it-probe
    rules:
      - alert: {name}
        expr: vector(1)
        for: 10m
        labels:
          severity: warning
          rule: it_probe
        annotations:
          summary: probe
"""
    # scaled as the live tests do: for 10m -> 1s
    mon.load_rules(mon.scaled_rules(rules, 1 / 600), name=name)
    try:
        firing = mon.wait_for(
            lambda: [a for a in mon.alerts("firing") if a["labels"]["alertname"] == name],
            timeout=15,
            what=f"{name} to fire in Prometheus",
        )
        assert firing[0]["labels"]["rule"] == "it_probe"
        delivered = mon.wait_for(
            lambda: mon.alertmanager_alerts({"alertname": name}),
            timeout=15,
            what=f"{name} to reach Alertmanager",
        )
        assert delivered[0]["labels"]["severity"] == "warning"
        assert delivered[0]["status"]["state"] == "active"
    finally:
        mon.unload_rules(name)
    assert not [g for g in mon.rule_groups() if g["name"] == "it-probe"]


def test_load_rules_refuses_an_invalid_file_and_keeps_the_others(monitoring: None) -> None:
    with pytest.raises(mon.MonitoringError, match="reload"):
        mon.load_rules("groups:\n  - name: broken\n    rules:\n      - alert: X\n        expr: (\n")
    assert not (mon.EXTRA_RULES_DIR / "test.yml").exists()
    assert any(Path(g["file"]).parent == mon.RULES_DIR for g in mon.rule_groups())
