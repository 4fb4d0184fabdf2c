"""``imgov demo``'s summary: breaches read in the unit their rule gives them."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from streams.cli.demo import print_summary
from streams.report.data import BreachHistory, ReportData
from streams.report.policy import load_policy_rules
from tests.unit.conftest import POLICY


def _breach(rule_id: str, kpi: str, value: float, threshold: float) -> dict[str, Any]:
    return {
        "breach_id": rule_id,
        "state": "OPEN",
        "rule_id": rule_id,
        "kpi": kpi,
        "severity": "CRITICAL",
        "window_size": "1d",
        "window_start_ms": 0,
        "window_end_ms": 86_400_000,
        "site_id": "site-02",
        "algorithm_name": "ich-detect",
        "algorithm_version": "*",
        "finding_code": "ICH",
        "value": value,
        "threshold": threshold,
        "evidence": "the evidence",
    }


def test_open_critical_breaches_print_a_cusum_as_statistic_and_limit() -> None:
    rules, _ = load_policy_rules(POLICY)
    data = ReportData(
        source="test",
        breaches=[
            BreachHistory(
                _breach("discordance-cusum", "discordance_rate", 5.863594, 5.863594), None
            ),
            BreachHistory(_breach("sustained-discordance", "discordance_rate", 0.226, 0.114), None),
        ],
    )
    out = io.StringIO()
    print_summary(data, Console(file=out, width=200, force_terminal=False), policy=rules)
    text = out.getvalue()

    assert (
        "discordance-cusum ich-detect at site-02: discordance_rate CUSUM 5.86 vs limit 5.86" in text
    )
    assert "586.4%" not in text
    assert "sustained-discordance ich-detect at site-02: discordance_rate 22.6% vs 11.4%" in text
