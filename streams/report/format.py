"""How the governance report writes values: KPI and window names, numbers, durations.

Dates, minutes, percentages and the text of a missing value come from
:mod:`schemas.units` (the CLI and the core print the same); what is particular to the
report is here: the names a committee reads for each KPI and window, hours for report
turnaround (p50 and p90 side by side, in one unit) and a breach's value and threshold in
its KPI's unit, or, for a CUSUM rule, as the statistic and its control limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.units import HOUR_MS, MISSING, format_duration, format_percent
from streams.core.kpi.breach import BreachRule, RuleKind

__all__ = [
    "KPI_LABELS",
    "WINDOW_LABELS",
    "format_breach_threshold",
    "format_breach_value",
    "format_hours",
    "format_kpi_value",
    "format_number",
]

KPI_LABELS = {
    "alert_ppv": "alert PPV",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "discordance_rate": "AI-report discordance",
    "score_psi": "score drift (PSI)",
    "alert_response_rate": "share of alerts answered within 15 min",
    "time_to_response": "time to first response",
    "dismiss_rate": "alert dismissals",
    "escalation_rate": "alert escalations",
    "inference_failure_rate": "inference failures",
    "coverage": "coverage",
    "time_to_result": "time to AI result",
    "ai_positive_rate": "AI positives per 100",
    "review_candidates": "review candidates",
}
"""What the report calls each KPI in sentences and chart titles."""

WINDOW_LABELS = {"1h": "hourly", "1d": "daily", "7d": "7-day", "30d": "30-day"}


# Always hours, unlike format_duration: the scorecard prints the turnaround p50 bare
# beside the p90 ("1.0 / 10.4 h"), so both must be in the same unit on every row.
def format_hours(ms: float | None) -> str:
    """Returns a duration in hours, ``10.4 h`` (``MISSING`` for None)."""
    return MISSING if ms is None else f"{ms / HOUR_MS:.1f} h"


def format_number(value: float | None, digits: int = 3) -> str:
    """Returns a count with thousands separators, other numbers to ``digits`` figures."""
    if value is None:
        return MISSING
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def format_kpi_value(kpi: str, value: float | None) -> str:
    """Returns a value of KPI ``kpi`` in its unit.

    Durations as a person reads them, report turnaround in hours, PSI and counts as
    plain numbers, everything else as a percentage.
    """
    if value is None:
        return MISSING
    if kpi in {"time_to_result", "time_to_response"}:
        return format_duration(value)
    if kpi.startswith("report_tat"):
        return format_hours(value)
    if kpi in {"score_psi", "review_candidates"}:
        return format_number(value)
    return format_percent(value)


def format_breach_value(b: Mapping[str, Any], policy: Sequence[BreachRule] = ()) -> str:
    """Returns the ``value`` of a breach row, as its rule defines it.

    The statistic of a CUSUM rule (looked up in ``policy`` by the row's ``rule_id``) as
    ``CUSUM 5.86``, any other value in the unit of the row's ``kpi`` (``23.4%``).
    """
    if _is_cusum(b, policy):
        return f"CUSUM {format_number(b['value'])}"
    return format_kpi_value(b["kpi"], b["value"])


def format_breach_threshold(b: Mapping[str, Any], policy: Sequence[BreachRule] = ()) -> str:
    """Returns the ``threshold`` of a breach row, as its rule defines it.

    The control limit of a CUSUM rule of ``policy`` as ``limit 5.86``, any other
    threshold in the unit of the row's ``kpi`` (``30.0%``).
    """
    if _is_cusum(b, policy):
        return f"limit {format_number(b['threshold'])}"
    return format_kpi_value(b["kpi"], b["threshold"])


# A CUSUM breach holds the statistic and its limit, not values of the KPI: only the rule
# that produced it says so (a breach row names its rule, not the rule's kind).
def _is_cusum(b: Mapping[str, Any], policy: Sequence[BreachRule]) -> bool:
    rule_id = b.get("rule_id")
    return any(rule.id == rule_id and rule.kind is RuleKind.CUSUM for rule in policy)
