"""The scorecard section: every model at every site over the whole period.

Two tables from the ``model_scorecard`` view, signal quality against the final report
and alerts and workflow, with the rates that set a site apart from its peers in red
(:func:`outlier_rates`; the demo's terminal summary flags the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from schemas.units import HOUR_MS, MISSING, format_duration, format_percent
from streams.core.kpi.stats import wilson_interval
from streams.report.data import ReportData
from streams.report.format import format_hours

__all__ = ["outlier_rates", "scorecard_section"]

Cell = Callable[[dict[str, Any]], str]

SIGNAL_COLUMNS: tuple[tuple[str, str, Cell], ...] = (
    ("studies", "studies", lambda r: f"{r['studies']:,}"),
    ("coverage", "coverage", lambda r: format_percent(r["coverage"])),
    ("ai_positive_rate", "AI positive", lambda r: format_percent(r["ai_positive_rate"])),
    ("tp", "TP", lambda r: f"{r['tp']:,}"),
    ("fp", "FP", lambda r: f"{r['fp']:,}"),
    ("fn", "FN", lambda r: f"{r['fn']:,}"),
    ("tn", "TN", lambda r: f"{r['tn']:,}"),
    ("ppv", "PPV", lambda r: format_percent(r["ppv"])),
    ("sensitivity", "sensitivity", lambda r: format_percent(r["sensitivity"])),
    ("specificity", "specificity", lambda r: format_percent(r["specificity"])),
    ("discordance_rate", "discordance", lambda r: format_percent(r["discordance_rate"])),
    ("review_candidates", "review candidates", lambda r: f"{r['review_candidates']:,}"),
)

WORKFLOW_COLUMNS: tuple[tuple[str, str, Cell], ...] = (
    ("inference_failure_rate", "AI failed", lambda r: format_percent(r["inference_failure_rate"])),
    (
        "time_to_result_p50_ms",
        "AI result p50",
        lambda r: format_duration(r["time_to_result_p50_ms"]),
    ),
    ("alerts_raised", "alerts", lambda r: f"{r['alerts_raised']:,}"),
    ("alert_response_rate", "answered ≤15 min", lambda r: format_percent(r["alert_response_rate"])),
    (
        "time_to_response_p50_ms",
        "response p50",
        lambda r: format_duration(r["time_to_response_p50_ms"]),
    ),
    ("dismiss_rate", "dismissed", lambda r: format_percent(r["dismiss_rate"])),
    ("escalation_rate", "escalated", lambda r: format_percent(r["escalation_rate"])),
    ("tat_pos", "report TAT p50 / p90, AI positive", lambda r: r["tat_pos"]),
    ("tat_neg", "report TAT p50 / p90, AI negative", lambda r: r["tat_neg"]),
)

# Proportions the scorecard compares between sites: (numerator, denominator) columns.
COMPARED: dict[str, tuple[Callable[[dict[str, Any]], int], Callable[[dict[str, Any]], int]]] = {
    "ppv": (lambda r: r["tp"], lambda r: r["tp"] + r["fp"]),
    "sensitivity": (lambda r: r["tp"], lambda r: r["tp"] + r["fn"]),
    "specificity": (lambda r: r["tn"], lambda r: r["tn"] + r["fp"]),
    "discordance_rate": (lambda r: r["fp"] + r["fn"], lambda r: r["labelled"]),
    "alert_response_rate": (lambda r: r["alerts_responded_in_sla"], lambda r: r["alerts_raised"]),
}


def outlier_rates(rows: Sequence[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Returns (algorithm, site, column) of rates that set a site apart from its peers.

    A site stands apart when its Wilson 95 % interval overlaps the interval of none of
    the model's other sites (at least two others: with two sites there is no telling
    which one is off).
    """
    flagged: set[tuple[str, str, str]] = set()
    for name, (num, den) in COMPARED.items():
        intervals: dict[tuple[str, str], tuple[float, float]] = {}
        for r in rows:
            if den(r) > 0:
                intervals[(r["algorithm_name"], r["site_id"])] = wilson_interval(num(r), den(r))
        for (algorithm, site), (low, high) in intervals.items():
            others = [iv for (a, s), iv in intervals.items() if a == algorithm and s != site]
            if len(others) >= 2 and all(high < o_low or low > o_high for o_low, o_high in others):
                flagged.add((algorithm, site, name))
    return flagged


def _turnaround(data: ReportData) -> dict[tuple[str, str, str], str]:
    return {
        (t["site_id"], t["algorithm_name"], t["ai_result"]): (
            f"{t['p50_ms'] / HOUR_MS:.1f} / {format_hours(t['p90_ms'])}"
        )
        for t in data.turnaround
    }


def _score_table(
    data: ReportData, columns: Sequence[tuple[str, str, Cell]], flagged: set[tuple[str, str, str]]
) -> str:
    head = (
        "<tr><th>model</th><th>site</th>"
        + "".join(f'<th class="r">{escape(label)}</th>' for _, label, _ in columns)
        + "</tr>"
    )
    body = []
    for r in data.scorecard:
        cells = []
        for name, _, cell in columns:
            bad = (r["algorithm_name"], r["site_id"], name) in flagged
            cells.append(f'<td class="r{" bad" if bad else ""}">{cell(r)}</td>')
        model = f"{r['algorithm_name']} {r['algorithm_version']}"
        body.append(
            f'<tr><td class="nw">{escape(model)}</td><td class="nw">{escape(r["site_id"])}</td>'
            + "".join(cells)
            + "</tr>"
        )
    return f'<div class="tw"><table>{head}{"".join(body)}</table></div>'


def scorecard_section(data: ReportData) -> str:
    """Returns the scorecard section: the signal and the workflow table, outliers in red."""
    tat = _turnaround(data)
    for r in data.scorecard:
        r["tat_pos"] = tat.get((r["site_id"], r["algorithm_name"], "POSITIVE"), MISSING)
        r["tat_neg"] = tat.get((r["site_id"], r["algorithm_name"], "NEGATIVE"), MISSING)
    flagged = outlier_rates(data.scorecard)
    return (
        "<h2>Scorecard per model and site</h2>"
        '<p class="caption">The whole period, from the latest lineage of every study (view '
        "<code>model_scorecard</code>). <span class='bad'>Red</span>: the site's 95% interval "
        "overlaps that of none of the model's other sites.</p>"
        "<h3>Signal quality against the final report</h3>"
        + _score_table(data, SIGNAL_COLUMNS, flagged)
        + "<h3>Alerts and workflow</h3>"
        + _score_table(data, WORKFLOW_COLUMNS, flagged)
    )
