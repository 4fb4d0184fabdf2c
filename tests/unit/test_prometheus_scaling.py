"""``scaled_rules``: the live tests' shortened copy of infra/prometheus/rules (no server)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.integration.prometheus_service import RULES_DIR, scaled_duration, scaled_rules

RULE_FILE = """\
groups:
  - name: g
    interval: 30s
    rules:
      - alert: A  # one of each
        expr: |
          deriv(x[10m]) > 0.05 * deriv(y[10m])
          unless changes(z[5m:30s]) > 0
          and max_over_time(rate(c[1h])[2h:]) > 0
          and x offset 1h30m > 0
          and w{reason=~"[a-z]+"} > 600
        for: 10m
        keep_firing_for: "2m"
        labels:
          severity: warning
        annotations:
          summary: "lag for 10m"  # words are not durations
      - record: r
        expr: sum by (group) (x)
"""


@pytest.mark.parametrize(
    ("duration", "factor", "expected"),
    [
        ("10m", 1 / 60, "10s"),
        ("1m", 1 / 60, "1s"),
        ("1h30m", 1 / 60, "90s"),
        ("90s", 1 / 60, "1500ms"),
        ("1d", 1 / 24, "1h"),
        ("5m", 2, "10m"),
        ("1s", 1e-6, "1ms"),
        ("2w", 1, "14d"),
    ],
)
def test_scaled_duration(duration: str, factor: float, expected: str) -> None:
    assert scaled_duration(duration, factor) == expected


@pytest.mark.parametrize(("duration", "factor"), [("10", 1.0), ("m", 1.0), ("5m", 0), ("5m", -1)])
def test_scaled_duration_rejects(duration: str, factor: float) -> None:
    with pytest.raises(ValueError):
        scaled_duration(duration, factor)


def test_every_duration_is_scaled_and_nothing_else() -> None:
    scaled = scaled_rules(RULE_FILE, 1 / 60)

    rule = yaml.safe_load(scaled)["groups"][0]["rules"][0]
    assert rule["for"] == "10s"
    assert rule["keep_firing_for"] == "2s"
    assert yaml.safe_load(scaled)["groups"][0]["interval"] == "500ms"
    expr = rule["expr"]
    assert "deriv(x[10s]) > 0.05 * deriv(y[10s])" in expr
    assert "changes(z[5s:500ms])" in expr
    assert "max_over_time(rate(c[1m])[2m:])" in expr
    assert "x offset 90s > 0" in expr
    # numbers, regular expressions, words and comments are not durations
    assert 'w{reason=~"[a-z]+"} > 600' in expr
    assert rule["annotations"]["summary"] == "lag for 10m"
    assert "# one of each" in scaled and "# words are not durations" in scaled
    # the layout is kept line for line
    assert len(scaled.splitlines()) == len(RULE_FILE.splitlines())


def test_factor_one_is_the_identity_on_the_shipped_rules() -> None:
    for path in RULES_DIR.glob("*.yml"):
        text = path.read_text()
        assert scaled_rules(text, 1) == text


def test_shipped_rules_scale_completely() -> None:
    """Every duration of the shipped rules is in a place scaled_rules rewrites: scaled
    by 1/60, no minute or hour remains in a field or an expression."""
    for path in RULES_DIR.glob("*.yml"):
        original = yaml.safe_load(path.read_text())
        scaled = yaml.safe_load(scaled_rules(path.read_text(), 1 / 60))
        for group, scaled_group in zip(original["groups"], scaled["groups"], strict=True):
            for rule, scaled_rule in zip(group["rules"], scaled_group["rules"], strict=True):
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        assert scaled_rule[key] == scaled_duration(rule[key], 1 / 60)
                assert not re.search(r"\d+[mhdwy]\b", scaled_rule["expr"]), scaled_rule["expr"]
                # only durations changed in the expression
                strip = re.compile(r"\d+(?:ms|[smhdwy])\b")
                assert strip.sub("D", scaled_rule["expr"]) == strip.sub("D", rule["expr"])


def test_rejects_a_non_positive_factor() -> None:
    with pytest.raises(ValueError):
        scaled_rules(RULE_FILE, 0)
