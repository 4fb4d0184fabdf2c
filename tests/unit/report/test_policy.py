"""The breach policy as the report reads it: the core's BreachPolicy, shown as written."""

from __future__ import annotations

from pathlib import Path

from streams.core.kpi.breach import BreachRule, Scope
from streams.report.data import ReportData
from streams.report.policy import (
    BASELINE_DAYS,
    discordance_baseline_days,
    load_policy_rules,
    site_cusum_rules,
)
from streams.report.sections import how_to_read_section, policy_section
from tests.unit.conftest import POLICY


def test_rules_come_from_the_core_policy_model() -> None:
    rules, version = load_policy_rules(POLICY)
    assert version == 3
    assert rules and all(isinstance(rule, BreachRule) for rule in rules)
    assert discordance_baseline_days(rules) == 60
    cusum_ids = [rule.id for rule in site_cusum_rules(rules)]
    assert cusum_ids == ["discordance-cusum", "specificity-cusum"]
    # The report draws the site series: a CUSUM rule on another scope is not charted.
    cusum = site_cusum_rules(rules)[0]
    assert site_cusum_rules([cusum.model_copy(update={"scope": Scope.GLOBAL})]) == []


def test_a_missing_or_invalid_policy_gives_no_rules(tmp_path: Path) -> None:
    assert load_policy_rules(tmp_path / "absent.toml") == ((), None)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = 1\n[[rules]]\nid = "x"\nkpi = "no_such_kpi"\nwindow = "1d"\n'
        'severity = "WARNING"\nthreshold = 1\n',
        encoding="utf-8",
    )
    assert load_policy_rules(bad) == ((), None)
    assert discordance_baseline_days(()) == BASELINE_DAYS


def test_the_policy_table_writes_rules_as_the_file_does() -> None:
    rules, version = load_policy_rules(POLICY)
    html = policy_section(rules, version)
    assert "Breach policy (version 3)" in html
    # The model holds thresholds as floats; the table prints the file's 900000 and 0.3.
    assert "p90 &gt; 900000 (at least 20 cases)" in html
    assert "&lt; 0.3, its one-sided 95% Wilson bound too (at least 20 cases)" in html
    assert "above the upper 95% bound of the first 60 days (at least 1 cases)" in html
    assert (
        "its Bernoulli CUSUM, accumulating the evidence of a rise of 0.03 over the first 60 days"
        " (at least 300 cases), reaches the limit h set by an in-control average run length of"
        " 2190 days; it stays at h while the shift lasts" in html
    )
    assert "its Bernoulli CUSUM, accumulating the evidence of a fall of 0.03" in html
    assert (
        "&gt;= 0.1, and a chi-square p-value against the reference below 0.001 (at least 100"
        " cases)" in html
    )
    assert '<span class="badge CRITICAL">CRITICAL</span>' in html
    assert "<td class='r'>7 / 7</td>" in html
    assert policy_section((), None) == ""


def test_the_reading_guide_names_the_policy_baseline() -> None:
    rule = BreachRule(
        id="d",
        kpi="discordance_rate",
        window="1d",
        severity="CRITICAL",
        kind="baseline",
        baseline_days=8,
    )
    html = how_to_read_section(ReportData(source="test"), [rule])
    assert "first 8 days" in html
    assert f"first {BASELINE_DAYS} days" in how_to_read_section(ReportData(source="test"), [])
    # Neither a CUSUM nor a significance test in that policy: not explained.
    assert "CUSUM" not in html and "chi-square" not in html


def test_the_reading_guide_explains_the_cusum_and_drift_significance() -> None:
    rules, _ = load_policy_rules(POLICY)
    html = how_to_read_section(ReportData(source="test"), rules)
    guide = html.split("<b>CUSUM</b>")[1].split("</li>")[0]
    assert "rule <code>discordance-cusum</code>" in guide
    assert "risen by 0.03 (3 points) from its first 60 days" in guide
    assert "limit h" in guide and "once in 2190 days on average" in guide
    assert "in-control average run length" in guide
    assert "stays at the limit while the shift lasts" in guide
    assert "resolves after 7 days below it" in guide
    drift = html.split("<b>Score drift</b>")[1].split("</li>")[0]
    assert "PSI is past its band <i>and</i> the chi-square test" in drift
    assert "p-value below 0.001" in drift
