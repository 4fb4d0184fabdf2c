"""How the report writes values: units per KPI, the shared text of a missing value."""

from __future__ import annotations

from schemas.units import MISSING
from streams.core.kpi.breach import BreachRule
from streams.report.format import (
    format_breach_threshold,
    format_breach_value,
    format_hours,
    format_number,
)


def test_breach_values_are_written_in_the_unit_of_their_kpi() -> None:
    def value(kpi: str, v: float | None) -> str:
        return format_breach_value({"kpi": kpi, "value": v})

    assert value("alert_ppv", 0.2345) == "23.4%"
    assert value("time_to_result", 900_000) == "15.0 min"
    assert value("report_tat_ai_positive", 9_000_000) == "2.5 h"
    assert value("score_psi", 0.31234) == "0.312"
    assert value("review_candidates", 12.0) == "12"
    assert value("alert_ppv", None) == MISSING


def test_a_cusum_breach_is_written_as_its_statistic_and_limit() -> None:
    cusum = BreachRule(
        id="discordance-cusum",
        kpi="discordance_rate",
        window="1d",
        kind="cusum",
        shift=0.03,
        arl0_days=1095,
        severity="CRITICAL",
    )
    sustained = BreachRule(
        id="sustained-discordance",
        kpi="discordance_rate",
        window="1d",
        kind="baseline",
        severity="CRITICAL",
    )
    policy = [sustained, cusum]
    row = {"rule_id": "discordance-cusum", "kpi": "discordance_rate"}
    statistic = {**row, "value": 5.863594, "threshold": 5.863594}
    assert format_breach_value(statistic, policy) == "CUSUM 5.86"
    assert format_breach_threshold(statistic, policy) == "limit 5.86"
    # The rule's kind decides, not the KPI: the sustained rule's values stay proportions.
    other = {**statistic, "rule_id": "sustained-discordance", "value": 0.226, "threshold": 0.114}
    assert format_breach_value(other, policy) == "22.6%"
    assert format_breach_threshold(other, policy) == "11.4%"
    # Without the policy there is no telling: the KPI's unit.
    assert format_breach_value(statistic) == "586.4%"


def test_numbers_and_hours() -> None:
    assert format_number(12_345) == "12,345"
    assert format_number(0.61234) == "0.612"
    assert format_number(None) == MISSING
    # Hours even below two hours: the scorecard prints p50 and p90 in one unit.
    assert format_hours(3_600_000) == "1.0 h"
    assert format_hours(None) == MISSING
