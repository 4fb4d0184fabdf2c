"""The governance report: one self-contained HTML file a governance committee reads.

``write_report(backend, path)`` reads the audit tables (``report_data``) and writes a
single HTML file with inline SVG charts (``report_svg``) and inline CSS: no script, no
web font, no network access, so it can be mailed, archived with the minutes and opened
offline. Sections, in order: what needs attention (open breaches as sentences), how to
read the report, the breaches with their evidence, the per-model scorecard, per model
the KPI series by site (signal quality, the sustained-discordance rule, score drift,
alert response, report turnaround), review candidates, the breach policy, and the
compliance queries that reproduce the numbers.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from sinks.query import QueryBackend
from streams.core.kpi.stats import wilson_interval
from streams.report.data import BreachHistory, KpiPoint, ReportData, load_report_data
from streams.report.svg import Band, HLine, Marker, Series, Zone, line_chart

__all__ = [
    "COMPLIANCE_QUERIES",
    "KPI_LABELS",
    "PolicyRule",
    "load_policy_rules",
    "outlier_rates",
    "render_report",
    "write_report",
]

NA = "\u2013"
"""Shown for a missing value (an en dash)."""

DAY_MS = 86_400_000
SITE_COLOURS = ("#2563eb", "#ea580c", "#0d9488", "#9333ea", "#ca8a04", "#db2777", "#4b5563")
POSITIVE_COLOUR, NEGATIVE_COLOUR = "#dc2626", "#2563eb"
BASELINE_DAYS = 60
"""Baseline of the sustained-discordance chart when the policy names none."""

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
WINDOW_LABELS = {"1h": "hourly", "1d": "daily", "7d": "7-day", "30d": "30-day"}

PolicyRule = dict[str, Any]
"""A breach rule as in the policy TOML (id, kpi, window, severity, description, ...)."""

COMPLIANCE_QUERIES: tuple[tuple[str, str], ...] = (
    (
        "Scorecard of one site",
        "SELECT algorithm_name, algorithm_version, studies, tp, fp, fn, tn, "
        "round(ppv, 3) AS ppv, round(sensitivity, 3) AS sens, round(specificity, 3) AS spec, "
        "round(discordance_rate, 3) AS discordance, review_candidates "
        "FROM model_scorecard WHERE site_id = 'site-02' AND algorithm_version IS NOT NULL "
        "ORDER BY algorithm_name",
    ),
    (
        "Open breaches with their evidence",
        "SELECT severity, rule_id, site_id, algorithm_name, window_size, "
        "toDate(toDateTime(intDiv(window_end_ms, 1000), 'UTC')) AS until, "
        "round(value, 3) AS value, round(threshold, 3) AS threshold, evidence "
        "FROM breaches_open ORDER BY severity, rule_id, site_id, algorithm_name, window_end_ms",
    ),
    (
        "Final 30-day alert PPV per site (the last 30 days of data)",
        "SELECT site_id, algorithm_name, numerator AS tp, denominator AS alerts_labelled, "
        "round(value, 3) AS ppv, round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high "
        "FROM kpi_final WHERE kpi = 'alert_ppv' AND window_size = '30d' "
        "AND algorithm_version = '*' AND site_id != '*' AND window_end_ms = "
        "(SELECT max(window_end_ms) FROM kpi_final WHERE kpi = 'ai_positive_rate' "
        "AND window_size = '1d') ORDER BY algorithm_name, site_id",
    ),
    (
        "Every revision of one study's lineage (pick a study_uid from the review candidates)",
        "SELECT algorithm_name, revision, outcome, completeness, ai_result, report_label, "
        "alert_final_state, length(event_ids) AS events, substring(record_hash, 1, 12) AS hash "
        "FROM lineage_history WHERE study_uid = '<study_uid>' "
        "ORDER BY algorithm_name, revision",
    ),
)
"""(title, SQL) of the queries the report and the demo print for compliance users."""


def load_policy_rules(path: Path) -> tuple[list[PolicyRule], int | None]:
    """Returns the rules and version of a breach policy file, for display only.

    A missing or unreadable policy gives no rules: the report then explains breaches
    by their evidence alone.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return [], None
    rules = [dict(rule) for rule in doc.get("rules", []) if isinstance(rule, dict)]
    version = doc.get("version")
    return rules, version if isinstance(version, int) else None


# --- formatting helpers ---------------------------------------------------------------


def _day(ms: int | None) -> str:
    if ms is None:
        return NA
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _when(ms: int | None) -> str:
    if ms is None:
        return NA
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value * 100:.{digits}f}%"


def _minutes(ms: float | None) -> str:
    return NA if ms is None else f"{ms / 60_000:.1f} min"


def _hours(ms: float | None) -> str:
    return NA if ms is None else f"{ms / 3_600_000:.1f} h"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return NA
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _breach_value(b: dict[str, Any]) -> str:
    value, kpi = b["value"], b["kpi"]
    if value is None:
        return NA
    if kpi in {"time_to_result", "time_to_response"}:
        return _minutes(value)
    if kpi.startswith("report_tat"):
        return _hours(value)
    if kpi in {"score_psi", "review_candidates"}:
        return _num(value)
    return _pct(value)


def _site_colour(sites: Sequence[str], site: str) -> str:
    return SITE_COLOURS[sites.index(site) % len(SITE_COLOURS)] if site in sites else "#4b5563"


# --- the page -------------------------------------------------------------------------

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --crit:#b91c1c;
  --warn:#b45309; --ok:#047857; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",
  Arial,sans-serif; color:var(--ink); background:var(--bg); }
main { max-width:1240px; margin:0 auto; padding:28px 32px 60px; }
header { border-bottom:3px solid var(--ink); padding-bottom:12px; margin-bottom:20px; }
h1 { font-size:26px; margin:0 0 4px; letter-spacing:-0.01em; }
h2 { font-size:19px; margin:34px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:22px 0 6px; }
p, li { max-width:92ch; }
.meta { color:var(--muted); }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px;
  margin:16px 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .n { font-size:26px; font-weight:650; }
.card .l { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card.crit { border-left:5px solid var(--crit); } .card.warn { border-left:5px solid var(--warn); }
.attention { background:#fff; border:1px solid var(--line); border-left:5px solid var(--crit);
  border-radius:8px; padding:10px 16px; }
.attention li { margin:4px 0; }
.howto { background:#fff; border:1px solid var(--line); border-radius:8px; padding:4px 18px; }
table { border-collapse:collapse; width:100%; background:#fff; font-size:12.5px;
  border:1px solid var(--line); }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:left;
  vertical-align:top; }
th { background:#f1f5f9; font-weight:600; white-space:nowrap; }
td.r, th.r { text-align:right; font-variant-numeric:tabular-nums; }
td.r { white-space:nowrap; }
td.nw { white-space:nowrap; }
.tw th { white-space:normal; }
.tw { overflow-x:auto; }
tr:nth-child(even) td { background:#fbfdff; }
.badge { display:inline-block; padding:1px 7px; border-radius:10px; font-size:11px;
  font-weight:600; color:#fff; }
.CRITICAL { background:var(--crit); } .WARNING { background:var(--warn); }
.RESOLVED { background:var(--ok); } .OPEN { background:#1f2937; }
.bad { color:var(--crit); font-weight:600; }
.evidence { color:#374151; font-size:12px; max-width:70ch; }
details summary { cursor:pointer; color:#1d4ed8; }
.grid { display:grid; grid-template-columns:repeat(3,1fr); gap:10px; }
.grid2 { display:grid; grid-template-columns:repeat(2,1fr); gap:10px; }
.panel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px; }
.caption { color:var(--muted); font-size:12.5px; margin:2px 0 8px; }
svg.chart { width:100%; height:auto; display:block; }
svg .ct { font-size:12px; font-weight:600; fill:#111827; }
svg .plot { fill:#fff; stroke:#d1d5db; }
svg .grid { stroke:#eef0f3; }
svg .axis { stroke:#9ca3af; }
svg .xt { font-size:9.5px; fill:#6b7280; text-anchor:middle; }
svg .yt { font-size:9.5px; fill:#6b7280; text-anchor:end; }
svg .hl { font-size:9.5px; text-anchor:end; }
svg .hll { font-size:9.5px; text-anchor:start; }
svg .lg { font-size:10.5px; fill:#374151; }
svg .empty { font-size:11px; fill:#9ca3af; text-anchor:middle; }
.legend-sites span { display:inline-block; margin-right:14px; font-size:12.5px; }
.legend-sites i { display:inline-block; width:18px; height:3px; vertical-align:middle;
  margin-right:5px; }
pre { background:#0f172a; color:#e2e8f0; padding:10px 12px; border-radius:6px;
  white-space:pre-wrap; font-size:12px; }
footer { margin-top:40px; color:var(--muted); font-size:12px; }
@media print { body { background:#fff; } .panel, .card { break-inside:avoid; } }
"""


def render_report(
    data: ReportData,
    *,
    generated_at_ms: int,
    policy: Sequence[PolicyRule] = (),
    policy_version: int | None = None,
    query_hint: str = "imgov query --chdb .imgov/demo/chdb",
) -> str:
    """Returns the whole report as one HTML document.

    Args:
        data: what ``load_report_data`` read.
        generated_at_ms: shown in the header (the caller reads the clock).
        policy: the breach rules, to explain each breach and draw the discordance baseline.
        policy_version: the policy file's version.
        query_hint: the command prefix shown with the compliance queries.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>imgov governance report</title>",
        f"<style>{CSS}</style></head><body><main>",
        _header(data, generated_at_ms),
        _attention(data, policy),
        _how_to_read(data, policy),
        _breaches(data, policy),
        _scorecard(data),
    ]
    for algorithm, finding in data.models:
        parts.append(_model_section(data, algorithm, finding, policy))
    parts.append(_reviews(data))
    parts.append(_policy(policy, policy_version))
    parts.append(_queries(query_hint, data))
    parts.append(
        "<footer>Generated by imgov from the audit tables (event_log, lineage_history, "
        "kpi_values, kpi_breaches, review_candidates). Every figure is a final KPI value; "
        "the numbers can be reproduced with the queries above.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _header(data: ReportData, generated_at_ms: int) -> str:
    period = f"{_day(data.period[0])} to {_day(data.period[1] - 1)}" if data.period else "no data"
    models = ", ".join(
        f"{name} {'/'.join(data.versions.get(name, []))} ({finding})"
        for name, finding in data.models
    )
    t = data.totals
    crit = sum(1 for b in data.open_breaches if b["severity"] == "CRITICAL")
    warn = len(data.open_breaches) - crit
    cards = [
        ("", f"{t.get('studies', 0):,}", "studies"),
        ("", f"{t.get('events', 0):,}", "events audited"),
        ("crit" if crit else "", str(crit), "open critical breaches"),
        ("warn" if warn else "", str(warn), "open warnings"),
        ("", f"{t.get('review_candidates', 0):,}", "review candidates"),
        ("", f"{t.get('rejected', 0):,}", "rejected inputs"),
    ]
    card_html = "".join(
        f'<div class="card {cls}"><div class="n">{n}</div>'
        f'<div class="l">{escape(label)}</div></div>'
        for cls, n, label in cards
    )
    return (
        "<header><h1>AI governance report</h1>"
        f'<div class="meta">Period {period} &middot; sites {escape(", ".join(data.sites))} '
        f"&middot; models {escape(models)}<br>Source: {escape(data.source)} &middot; "
        f"generated {_when(generated_at_ms)} UTC</div></header>"
        f'<div class="cards">{card_html}</div>'
    )


def _partial(row: dict[str, Any], data: ReportData) -> str:
    if data.period is not None and row["window_end_ms"] > data.period[1]:
        return " (this window reaches past the last day of data: it holds fewer days)"
    return ""


def _sentence(b: BreachHistory, data: ReportData) -> str:
    row = b.opened
    kpi = KPI_LABELS.get(row["kpi"], row["kpi"])
    window = WINDOW_LABELS.get(row["window_size"], row["window_size"])
    threshold = row["threshold"]
    against = (
        f" against {_breach_value({**row, 'value': threshold})}" if threshold is not None else ""
    )
    return (
        f'<li><span class="badge {row["severity"]}">{row["severity"]}</span> '
        f"<b>{escape(row['algorithm_name'])} at {escape(row['site_id'])}</b>: {window} "
        f"{escape(kpi)} {_breach_value(row)}{against} in the window ending "
        f"{_day(row['window_end_ms'] - 1)} (rule <code>{escape(row['rule_id'])}</code>)"
        f"{_partial(row, data)}.</li>"
    )


def _attention(data: ReportData, policy: Sequence[PolicyRule]) -> str:
    critical = [b for b in data.open_breaches if b["severity"] == "CRITICAL"]
    if not data.open_breaches:
        return (
            '<div class="attention" style="border-left-color:var(--ok)"><p>No breach of the '
            "governance policy is open.</p></div>"
        )
    shown = critical or data.open_breaches[:5]
    items = "".join(_sentence(b, data) for b in shown)
    rest = len(data.open_breaches) - len(shown)
    more = (
        f"<p class='meta'>…and {rest} open warning(s), listed under Breaches.</p>" if rest else ""
    )
    charts = _evidence_charts(data, shown, policy)
    return (
        f'<h2>What needs attention</h2><div class="attention"><ul>{items}</ul>{more}{charts}</div>'
    )


def _evidence_charts(
    data: ReportData, breaches: Sequence[BreachHistory], policy: Sequence[PolicyRule]
) -> str:
    """Returns the chart behind each breach listed (one per KPI, model and site)."""
    panels: dict[tuple[str, str, str], str] = {}
    for b in breaches:
        kpi, algorithm, site = b["kpi"], b["algorithm_name"], b["site_id"]
        finding = b["finding_code"]
        if kpi == "discordance_rate" and b["window_size"] == "1d":
            key = (kpi, algorithm, site)
            if key not in panels:
                panels[key] = _discordance_chart(
                    data, algorithm, finding, site, _baseline_days(policy), with_model=True
                )
        elif kpi == "score_psi":
            key = (kpi, algorithm, "*")
            if key not in panels:
                panels[key] = _psi_chart(data, algorithm, finding, with_model=True)
        elif any(k[0] == kpi and k[1] == "7d" for k in data.series):
            key = (kpi, algorithm, "*")
            if key not in panels:
                title = f"{algorithm}: {KPI_LABELS.get(kpi, kpi)} (7 days)"
                panels[key] = _rate_chart(data, kpi, algorithm, finding, title)
    if not panels:
        return ""
    cells = "".join(f'<div class="panel">{svg}</div>' for svg in list(panels.values())[:3])
    return f'<div class="grid" style="margin:6px 0 10px">{cells}</div>'


def _how_to_read(data: ReportData, policy: Sequence[PolicyRule]) -> str:
    return f"""
<h2>How to read this report</h2>
<div class="howto"><ul>
<li><b>Every number is a final KPI value</b> computed from the lineage of each study: the AI
inference, the alert and what happened to it, and the final radiology report, joined per
study and algorithm. The report is the reference standard: a <i>true positive</i> is an AI
positive the report confirms, a <i>false positive</i> one the report calls absent.</li>
<li><b>Lines are per site</b> (colours below). Shaded bands are Wilson 95% confidence intervals:
two sites whose bands overlap are not clearly different. 7-day values are plotted at the end
of their 7 days.</li>
<li><b>Triangles</b> at the top of a chart mark the window in which a breach of the
governance policy opened, in the colour of its site (in single-site charts: red critical,
amber warning). The rules and their severities are listed at the end.</li>
<li><b>Sustained discordance</b> (Mayo Clinic rule): each dot is one day's share of studies
where AI and report disagree; the dashed line is the upper 95% bound of the site's own
first {BASELINE_DAYS} days. Seven red days in a row open a CRITICAL breach: review the model at
that site.</li>
<li><b>Score drift</b> (PSI, population stability index of the AI score histogram against the
first 14 days): below 0.1 no shift, 0.1 to 0.25 moderate, above 0.25 major. A drift without a
change in discordance can still mean a new scanner or protocol.</li>
<li><b>Review candidates</b> are AI-positive studies the report called negative and nobody
interacted with the alert: candidates for a secondary read.</li>
</ul>
<p class="legend-sites">{_site_legend(data.sites)}</p></div>"""


def _site_legend(sites: Sequence[str]) -> str:
    return "".join(
        f'<span><i style="background:{_site_colour(sites, s)}"></i>{escape(s)}</span>'
        for s in sites
    )


def _breach_row(b: BreachHistory, data: ReportData) -> str:
    row = b.opened
    partial = ""
    if data.period is not None and row["window_end_ms"] > data.period[1]:
        partial = '<br><span class="meta">reaches past the data: fewer days</span>'
    if b.resolved is None:
        state = '<span class="badge OPEN">OPEN</span>'
    else:
        resolved_on = _day(b.resolved["window_end_ms"] - 1)
        state = f'<span class="badge RESOLVED">RESOLVED</span> {resolved_on}'

    return (
        f'<tr><td><span class="badge {row["severity"]}">{row["severity"]}</span></td>'
        f'<td class="nw">{state}</td><td class="nw"><code>{escape(row["rule_id"])}</code></td>'
        f'<td class="nw">{escape(row["algorithm_name"])}</td>'
        f'<td class="nw">{escape(row["site_id"])}</td>'
        f'<td class="nw">{escape(row["window_size"])} ending '
        f"{_day(row['window_end_ms'] - 1)}{partial}</td>"
        f'<td class="r">{_breach_value(row)}</td>'
        f'<td class="r">{_breach_value({**row, "value": row["threshold"]})}</td>'
        f'<td class="evidence">{escape(row["evidence"])}</td></tr>'
    )


def _breach_table(rows: Sequence[BreachHistory], data: ReportData) -> str:
    head = (
        "<table><tr><th>severity</th><th>state</th><th>rule</th><th>model</th><th>site</th>"
        '<th>opened on window</th><th class="r">value</th><th class="r">threshold</th>'
        "<th>evidence (the final KPI windows behind it)</th></tr>"
    )
    return head + "".join(_breach_row(b, data) for b in rows) + "</table>"


def _breaches(data: ReportData, policy: Sequence[PolicyRule]) -> str:
    if not data.breaches:
        return "<h2>Breaches</h2><p>No breach was opened in this period.</p>"
    order = {"CRITICAL": 0, "WARNING": 1}

    def key(b: BreachHistory) -> tuple[int, str, str, int]:
        return (order.get(b["severity"], 2), b["rule_id"], b["site_id"], b["window_end_ms"])

    open_rows = sorted(data.open_breaches, key=key)
    closed = sorted((b for b in data.breaches if not b.is_open), key=key)
    counts: dict[str, int] = {}
    for b in data.breaches:
        counts[b["rule_id"]] = counts.get(b["rule_id"], 0) + 1
    summary = ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items()))
    html = [
        "<h2>Breaches</h2>",
        f'<p class="caption">{len(data.breaches)} breaches opened in the period ({summary}); '
        f"{len(open_rows)} still open. Each names the policy rule and the final KPI windows that "
        "triggered it (table <code>kpi_breaches</code>, view <code>breaches_open</code>).</p>",
    ]
    if open_rows:
        html.append("<h3>Open</h3>" + _breach_table(open_rows, data))
    if closed:
        html.append(
            f"<details><summary>{len(closed)} resolved breach(es)</summary>"
            + _breach_table(closed, data)
            + "</details>"
        )
    return "".join(html)


Cell = Callable[[dict[str, Any]], str]

SIGNAL_COLUMNS: tuple[tuple[str, str, Cell], ...] = (
    ("studies", "studies", lambda r: f"{r['studies']:,}"),
    ("coverage", "coverage", lambda r: _pct(r["coverage"])),
    ("ai_positive_rate", "AI positive", lambda r: _pct(r["ai_positive_rate"])),
    ("tp", "TP", lambda r: f"{r['tp']:,}"),
    ("fp", "FP", lambda r: f"{r['fp']:,}"),
    ("fn", "FN", lambda r: f"{r['fn']:,}"),
    ("tn", "TN", lambda r: f"{r['tn']:,}"),
    ("ppv", "PPV", lambda r: _pct(r["ppv"])),
    ("sensitivity", "sensitivity", lambda r: _pct(r["sensitivity"])),
    ("specificity", "specificity", lambda r: _pct(r["specificity"])),
    ("discordance_rate", "discordance", lambda r: _pct(r["discordance_rate"])),
    ("review_candidates", "review candidates", lambda r: f"{r['review_candidates']:,}"),
)

WORKFLOW_COLUMNS: tuple[tuple[str, str, Cell], ...] = (
    ("inference_failure_rate", "AI failed", lambda r: _pct(r["inference_failure_rate"])),
    ("time_to_result_p50_ms", "AI result p50", lambda r: _minutes(r["time_to_result_p50_ms"])),
    ("alerts_raised", "alerts", lambda r: f"{r['alerts_raised']:,}"),
    ("alert_response_rate", "answered ≤15 min", lambda r: _pct(r["alert_response_rate"])),
    ("time_to_response_p50_ms", "response p50", lambda r: _minutes(r["time_to_response_p50_ms"])),
    ("dismiss_rate", "dismissed", lambda r: _pct(r["dismiss_rate"])),
    ("escalation_rate", "escalated", lambda r: _pct(r["escalation_rate"])),
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
            f"{t['p50_ms'] / 3_600_000:.1f} / {_hours(t['p90_ms'])}"
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


def _scorecard(data: ReportData) -> str:
    tat = _turnaround(data)
    for r in data.scorecard:
        r["tat_pos"] = tat.get((r["site_id"], r["algorithm_name"], "POSITIVE"), NA)
        r["tat_neg"] = tat.get((r["site_id"], r["algorithm_name"], "NEGATIVE"), NA)
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


# --- charts -----------------------------------------------------------------------------


def _x_range(data: ReportData) -> tuple[int, int]:
    if data.period is None:
        return (0, DAY_MS)
    return data.period


def _inside(points: Sequence[KpiPoint], period: tuple[int, int]) -> list[KpiPoint]:
    # Rolling windows that reach before the first or after the last day of data hold
    # only part of their days: leave them out rather than plot thin, noisy values.
    return [p for p in points if p.start_ms >= period[0] and p.end_ms <= period[1]]


def _markers(
    data: ReportData, kpis: set[str], algorithm: str, site: str | None = None
) -> list[Marker]:
    out = []
    for b in data.breaches:
        if b["kpi"] not in kpis or b["algorithm_name"] != algorithm:
            continue
        if site is not None and b["site_id"] != site:
            continue
        state = (
            "open" if b.resolved is None else f"resolved {_day(b.resolved['window_end_ms'] - 1)}"
        )
        label = (
            f"{b['severity']} {b['rule_id']} at {b['site_id']}, window ending "
            f"{_day(b['window_end_ms'] - 1)} ({state})"
        )
        if site is None:  # several sites in one chart: the marker takes the site's colour
            colour = _site_colour(data.sites, b["site_id"])
        else:
            colour = "#dc2626" if b["severity"] == "CRITICAL" else "#d97706"
        # Warnings can be many: a triangle each, a line down the plot only for critical.
        out.append(Marker(b["window_end_ms"], label, colour, b["severity"] == "CRITICAL"))
    return out


def _rate_chart(
    data: ReportData, kpi: str, algorithm: str, finding: str, title: str, *, wide: bool = False
) -> str:
    series = []
    period = _x_range(data)
    for site in data.sites:
        points = _inside(data.points(kpi, "7d", site, algorithm, finding), period)
        colour = _site_colour(data.sites, site)
        series.append(
            Series(
                site,
                [(p.end_ms, p.value) for p in points],
                colour,
                band=Band([(p.end_ms, p.ci_low, p.ci_high) for p in points], colour, 0.10),
            )
        )
    return line_chart(
        series,
        x_range=period,
        title=title,
        percent=True,
        markers=_markers(data, {kpi}, algorithm),
        legend=False,
        width=_width(wide),
        height=_height(wide),
    )


# Two charts a row are drawn on a wider canvas, so text keeps the same size on screen.
def _width(wide: bool) -> int:
    return 640 if wide else 420


def _height(wide: bool) -> int:
    return 240 if wide else 210


def _baseline_days(policy: Sequence[PolicyRule]) -> int:
    for rule in policy:
        if rule.get("kpi") == "discordance_rate" and rule.get("kind") == "baseline":
            return int(rule.get("baseline_days", BASELINE_DAYS))
    return BASELINE_DAYS


def _discordance_chart(
    data: ReportData,
    algorithm: str,
    finding: str,
    site: str,
    baseline_days: int,
    *,
    with_model: bool = False,
) -> str:
    # Mirrors the sustained-discordance rule: the baseline pools the site's daily
    # windows of its first ``baseline_days`` days; the line is its upper Wilson bound.
    points = [
        p
        for p in data.points("discordance_rate", "1d", site, algorithm, finding)
        if data.period is None or data.period[0] <= p.start_ms < data.period[1]
    ]
    colour = _site_colour(data.sites, site)
    hlines: list[HLine] = []
    highlight: set[int] = set()
    if points:
        end = points[0].start_ms + baseline_days * DAY_MS
        base = [p for p in points if p.start_ms < end]
        num = sum(p.numerator or 0 for p in base)
        den = sum(p.denominator or 0 for p in base)
        if den > 0:
            _, high = wilson_interval(num, den)
            # The policy judged each day by its first final value; later revisions can
            # move the pooled baseline a little. Draw the bound the policy used.
            high = _policy_bound(data, algorithm, site) or high
            hlines = [
                HLine(num / den, f"baseline {_pct(num / den)}", "#6b7280", False, True),
                HLine(high, f"upper 95% {_pct(high)}", "#dc2626"),
            ]
            highlight = {
                p.end_ms
                for p in points
                if p.start_ms >= end and p.value is not None and p.value > high
            }
    series = [
        Series(
            "daily discordance",
            [(p.end_ms, p.value) for p in points],
            colour,
            dots=True,
            highlight=frozenset(highlight),
        )
    ]
    return line_chart(
        series,
        x_range=_x_range(data),
        title=(
            f"{algorithm} at {site}: daily discordance vs baseline"
            if with_model
            else f"{site}: daily discordance (red: above the bound)"
        ),
        percent=True,
        hlines=hlines,
        markers=_markers(data, {"discordance_rate"}, algorithm, site),
        legend=False,
    )


def _policy_bound(data: ReportData, algorithm: str, site: str) -> float | None:
    for b in data.breaches:
        if (
            b["kpi"] == "discordance_rate"
            and b["window_size"] == "1d"
            and b["algorithm_name"] == algorithm
            and b["site_id"] == site
            and b["threshold"] is not None
        ):
            return float(b["threshold"])
    return None


def _site_lines(
    data: ReportData,
    kpi: str,
    algorithm: str,
    finding: str,
    scale: float = 1.0,
    statistic: str = "value",
) -> list[Series]:
    period = _x_range(data)
    out = []
    for site in data.sites:
        points = _inside(data.points(kpi, "7d", site, algorithm, finding), period)
        out.append(
            Series(
                site,
                [(p.end_ms, _div(getattr(p, statistic), scale)) for p in points],
                _site_colour(data.sites, site),
            )
        )
    return out


def _psi_chart(data: ReportData, algorithm: str, finding: str, *, with_model: bool = False) -> str:
    series = _site_lines(data, "score_psi", algorithm, finding)
    values = [y for s in series for _, y in s.points if y is not None]
    top = max([0.35, *values]) * 1.05
    return line_chart(
        series,
        x_range=_x_range(data),
        title=(
            f"{algorithm}: score drift (PSI, 7 days), by site"
            if with_model
            else "Score drift: PSI of each 7 days against the first 14 days"
        ),
        y_range=(0.0, top),
        hlines=[HLine(0.1, "0.1 moderate", "#d97706"), HLine(0.25, "0.25 major", "#dc2626")],
        zones=[Zone(0.1, 0.25, "#f59e0b", 0.08), Zone(0.25, top, "#ef4444", 0.07)],
        markers=_markers(data, {"score_psi"}, algorithm),
        legend=with_model,
        width=_width(not with_model),
        height=_height(not with_model),
    )


def _response_time_chart(data: ReportData, algorithm: str, finding: str) -> str:
    series = _site_lines(data, "time_to_response", algorithm, finding, 60_000, "p50")
    series += [
        Series(s.name, p90.points, s.color, dashed=True, width=1.1)
        for s, p90 in zip(
            series,
            _site_lines(data, "time_to_response", algorithm, finding, 60_000, "p90"),
            strict=True,
        )
    ]
    return line_chart(
        series,
        x_range=_x_range(data),
        title="Time to first response, minutes (7 days; p50 solid, p90 dashed)",
        hlines=[HLine(15, "SLA 15 min", "#6b7280")],
        markers=_markers(data, {"time_to_response"}, algorithm),
        legend=False,
        width=_width(True),
        height=_height(True),
    )


def _div(value: float | None, by: float) -> float | None:
    return None if value is None else value / by


def _tat_chart(data: ReportData, algorithm: str, finding: str, site: str) -> str:
    period = _x_range(data)
    series = []
    for kpi, name, colour in (
        ("report_tat_ai_positive", "AI positive", POSITIVE_COLOUR),
        ("report_tat_ai_negative", "AI negative", NEGATIVE_COLOUR),
    ):
        points = _inside(data.points(kpi, "7d", site, algorithm, finding), period)
        series.append(Series(name, [(p.end_ms, _div(p.p50, 3_600_000)) for p in points], colour))
    return line_chart(
        series,
        x_range=period,
        title=f"{site}: report turnaround p50, hours",
        legend=True,
    )


def _model_section(
    data: ReportData, algorithm: str, finding: str, policy: Sequence[PolicyRule]
) -> str:
    baseline_days = _baseline_days(policy)
    panel = '<div class="panel">{}</div>'.format
    signal = "".join(
        panel(_rate_chart(data, kpi, algorithm, finding, title))
        for kpi, title in (
            ("alert_ppv", "Alert PPV (7 days): alerts the report confirms"),
            ("sensitivity", "Sensitivity (7 days)"),
            ("specificity", "Specificity (7 days)"),
        )
    )
    discordance = "".join(
        panel(_discordance_chart(data, algorithm, finding, site, baseline_days))
        for site in data.sites
    )
    response = panel(
        _rate_chart(
            data,
            "alert_response_rate",
            algorithm,
            finding,
            "Alerts answered within 15 min (7 days)",
            wide=True,
        )
    ) + panel(_response_time_chart(data, algorithm, finding))
    drift = panel(_psi_chart(data, algorithm, finding)) + panel(
        _rate_chart(
            data,
            "coverage",
            algorithm,
            finding,
            "Coverage: reported eligible studies the AI read (7 days)",
            wide=True,
        )
    )
    tat = "".join(panel(_tat_chart(data, algorithm, finding, site)) for site in data.sites)
    versions = "/".join(data.versions.get(algorithm, []))
    return f"""
<h2>{escape(algorithm)} {escape(versions)} &mdash; {escape(finding)}</h2>
<p class="legend-sites">{_site_legend(data.sites)}</p>
<h3>Signal quality against the final report</h3>
<div class="grid">{signal}</div>
<h3>Sustained discordance (baseline: the first {baseline_days} days of each site)</h3>
<div class="grid">{discordance}</div>
<h3>Alert usefulness</h3>
<div class="grid2">{response}</div>
<h3>Score drift and coverage</h3>
<div class="grid2">{drift}</div>
<h3>Reporting impact: turnaround of AI-positive vs AI-negative studies</h3>
<p class="caption">Exam completed to first final report, median of each 7 days (p90 over
the period in the scorecard). When the alert reprioritises the worklist, AI-positive
studies should be reported sooner.</p>
<div class="grid">{tat}</div>"""


def _reviews(data: ReportData) -> str:
    counts = "".join(
        f"<tr><td>{escape(site)}</td><td>{escape(algorithm)}</td><td class='r'>{n}</td></tr>"
        for (site, algorithm), n in sorted(data.review_counts.items())
    )
    examples = "".join(
        f"<tr><td>{escape(r['site_id'])}</td><td><code>{escape(r['study_uid'])}</code></td>"
        f"<td>{escape(r['algorithm_name'])}</td><td class='r'>{_num(r['score'])}</td>"
        f"<td>{escape(str(r['report_label']))}</td><td>{escape(str(r['alert_channel']))}, "
        f"{escape(str(r['alert_final_state']))}</td><td>{_when(r['report_final_at_ms'])}</td></tr>"
        for r in data.review_examples
    )
    return f"""
<h2>Review candidates</h2>
<p class="caption">{data.totals.get("review_candidates", 0):,} studies where the AI was positive,
the final report says absent and nobody interacted with the alert (view
<code>lineage_latest</code>, <code>review_candidate = 1</code>; announced on topic
<code>governance.review.v1</code> and in table <code>review_candidates</code>).</p>
<div class="grid2"><div><table><tr><th>site</th><th>model</th><th class="r">candidates</th></tr>
{counts}</table></div><div></div></div>
<h3>Most recent</h3>
<table><tr><th>site</th><th>study</th><th>model</th><th class="r">score</th><th>report</th>
<th>alert channel, final state</th><th>report final</th></tr>{examples}</table>"""


def _policy(policy: Sequence[PolicyRule], version: int | None) -> str:
    if not policy:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(str(r.get('id')))}</code></td>"
        f"<td>{_badge(str(r.get('severity')))}</td>"
        f"<td>{escape(str(r.get('kpi')))} over {escape(str(r.get('window')))}</td>"
        f"<td>{escape(_rule_test(r))}</td>"
        f"<td class='r'>{r.get('open_after', 1)} / {r.get('resolve_after', 1)}</td>"
        f"<td>{escape(str(r.get('description', '')))}</td></tr>"
        for r in policy
    )
    return f"""
<h2>Breach policy{f" (version {version})" if version is not None else ""}</h2>
<table><tr><th>rule</th><th>severity</th><th>KPI</th><th>breaching when</th>
<th class="r">open / resolve after</th><th>why</th></tr>{rows}</table>"""


def _badge(severity: str) -> str:
    return f'<span class="badge {escape(severity)}">{escape(severity)}</span>'


def _rule_test(rule: PolicyRule) -> str:
    floor = f" (at least {rule.get('min_denominator', 1):g} cases)"
    if rule.get("kind") == "baseline":
        return (
            f"above the upper 95% bound of the first {rule.get('baseline_days', 60)} days" + floor
        )
    statistic = rule.get("statistic", "value")
    stat = "" if statistic == "value" else f"{statistic} "
    return f"{stat}{rule.get('comparator', '>')} {rule.get('threshold')}" + floor


def _queries(hint: str, data: ReportData) -> str:
    study = data.review_examples[0]["study_uid"] if data.review_examples else "<study_uid>"
    items = "".join(
        f'<h3>{escape(title)}</h3><pre>{escape(hint)} "{escape(sql.replace("<study_uid>", study))}"'
        "</pre>"
        for title, sql in COMPLIANCE_QUERIES
    )
    return f"""
<h2>Reproduce these numbers</h2>
<p class="caption">The audit tables answer every figure above. Run, for example:</p>{items}"""


def write_report(
    backend: QueryBackend,
    path: Path,
    *,
    source: str,
    generated_at_ms: int,
    policy: Sequence[PolicyRule] = (),
    policy_version: int | None = None,
    query_hint: str = "imgov query --chdb .imgov/demo/chdb",
) -> ReportData:
    """Reads the audit tables behind ``backend`` and writes the report to ``path``.

    Returns:
        The data the report shows (the demo prints its summary from it).

    Raises:
        QueryError: the audit tables cannot be read.
        OSError: the file cannot be written.
    """
    data = load_report_data(backend, source)
    html = render_report(
        data,
        generated_at_ms=generated_at_ms,
        policy=policy,
        policy_version=policy_version,
        query_hint=query_hint,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return data
