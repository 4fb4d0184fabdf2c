"""The breach policy as the report reads it: the core's BreachPolicy, shown as written."""

from __future__ import annotations

from pathlib import Path

from streams.core.kpi.breach import BreachRule
from streams.report.data import ReportData
from streams.report.policy import BASELINE_DAYS, discordance_baseline_days, load_policy_rules
from streams.report.sections import how_to_read_section, policy_section
from tests.unit.conftest import POLICY


def test_rules_come_from_the_core_policy_model() -> None:
    rules, version = load_policy_rules(POLICY)
    assert version == 2
    assert rules and all(isinstance(rule, BreachRule) for rule in rules)
    assert discordance_baseline_days(rules) == 60


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
    assert "Breach policy (version 2)" in html
    # The model holds thresholds as floats; the table prints the file's 900000 and 0.3.
    assert "p90 &gt; 900000 (at least 20 cases)" in html
    assert "&lt; 0.3, its one-sided 95% Wilson bound too (at least 20 cases)" in html
    assert "above the upper 95% bound of the first 60 days (at least 1 cases)" in html
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
