"""The sections of the report page, in the order it shows them.

Header, what needs attention, how to read the report, the breaches, one section per
model (its charts), the review candidates and the breach policy. Each function returns
an HTML fragment; values are escaped here, where they enter the page. The scorecard and
the compliance queries have modules of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from schemas.units import format_day, format_minute
from streams.core.kpi.breach import BreachRule, Evidence, RuleKind
from streams.report.charts import (
    cusum_chart,
    discordance_chart,
    psi_chart,
    rate_chart,
    response_time_chart,
    tat_chart,
)
from streams.report.data import BreachHistory, ReportData
from streams.report.format import (
    KPI_LABELS,
    WINDOW_LABELS,
    format_breach_threshold,
    format_breach_value,
    format_number,
)
from streams.report.policy import discordance_baseline_days, site_cusum_rules
from streams.report.style import site_colour

__all__ = [
    "attention_section",
    "breaches_section",
    "header_section",
    "how_to_read_section",
    "model_section",
    "policy_section",
    "reviews_section",
]


def header_section(data: ReportData, generated_at_ms: int) -> str:
    """Returns the title, the period, sites and models, and the headline counts."""
    period = (
        f"{format_day(data.period[0])} to {format_day(data.period[1] - 1)}"
        if data.period
        else "no data"
    )
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
        f"generated {format_minute(generated_at_ms)} UTC</div></header>"
        f'<div class="cards">{card_html}</div>'
    )


def _partial(row: dict[str, Any], data: ReportData) -> str:
    if data.period is not None and row["window_end_ms"] > data.period[1]:
        return " (this window reaches past the last day of data: it holds fewer days)"
    return ""


def _sentence(b: BreachHistory, data: ReportData, policy: Sequence[BreachRule]) -> str:
    row = b.opened
    kpi = KPI_LABELS.get(row["kpi"], row["kpi"])
    window = WINDOW_LABELS.get(row["window_size"], row["window_size"])
    against = (
        f" against {format_breach_threshold(row, policy)}" if row["threshold"] is not None else ""
    )
    return (
        f'<li><span class="badge {row["severity"]}">{row["severity"]}</span> '
        f"<b>{escape(row['algorithm_name'])} at {escape(row['site_id'])}</b>: {window} "
        f"{escape(kpi)} {format_breach_value(row, policy)}{against} in the window ending "
        f"{format_day(row['window_end_ms'] - 1)} (rule <code>{escape(row['rule_id'])}</code>)"
        f"{_partial(row, data)}.</li>"
    )


def attention_section(data: ReportData, policy: Sequence[BreachRule]) -> str:
    """Returns the open breaches as sentences, with the charts behind them.

    Only the critical ones when there are any (else the first five open ones): the
    others are counted and listed under Breaches.
    """
    critical = [b for b in data.open_breaches if b["severity"] == "CRITICAL"]
    if not data.open_breaches:
        return (
            '<div class="attention" style="border-left-color:var(--ok)"><p>No breach of the '
            "governance policy is open.</p></div>"
        )
    shown = critical or data.open_breaches[:5]
    items = "".join(_sentence(b, data, policy) for b in shown)
    rest = len(data.open_breaches) - len(shown)
    more = (
        f"<p class='meta'>…and {rest} open warning(s), listed under Breaches.</p>" if rest else ""
    )
    charts = _evidence_charts(data, shown, policy)
    return (
        f'<h2>What needs attention</h2><div class="attention"><ul>{items}</ul>{more}{charts}</div>'
    )


def _evidence_charts(
    data: ReportData, breaches: Sequence[BreachHistory], policy: Sequence[BreachRule]
) -> str:
    """Returns the chart behind each breach listed (one per KPI, model and site).

    A CUSUM breach is shown by its statistic's path (one chart per rule, model and site).
    """
    panels: dict[tuple[str, str, str], str] = {}
    cusums = {rule.id: rule for rule in site_cusum_rules(policy)}
    for b in breaches:
        kpi, algorithm, site = b["kpi"], b["algorithm_name"], b["site_id"]
        finding = b["finding_code"]
        cusum = cusums.get(b["rule_id"])
        if cusum is not None:
            key = (cusum.id, algorithm, site)
            if key not in panels:
                panels[key] = cusum_chart(data, cusum, algorithm, finding, site, with_model=True)
        elif kpi == "discordance_rate" and b["window_size"] == "1d":
            key = (kpi, algorithm, site)
            if key not in panels:
                panels[key] = discordance_chart(
                    data, algorithm, finding, site, policy, with_model=True
                )
        elif kpi == "score_psi":
            key = (kpi, algorithm, "*")
            if key not in panels:
                panels[key] = psi_chart(data, algorithm, finding, with_model=True)
        elif any(k[0] == kpi and k[1] == "7d" for k in data.series):
            key = (kpi, algorithm, "*")
            if key not in panels:
                title = f"{algorithm}: {KPI_LABELS.get(kpi, kpi)} (7 days)"
                panels[key] = rate_chart(data, kpi, algorithm, finding, title)
    if not panels:
        return ""
    shown = list(panels.items())[:3]
    cells = "".join(f'<div class="panel">{svg}</div>' for _, svg in shown)
    note = ""
    if any(key[0] in cusums for key, _ in shown):
        note = (
            '<p class="caption">The CUSUM is recomputed from the final daily values; the '
            "pipeline judged each day on its first final value, so a day revised since can "
            "move the statistic and its limit a little from the breach's.</p>"
        )
    return f'<div class="grid" style="margin:6px 0 10px">{cells}</div>{note}'


def how_to_read_section(data: ReportData, policy: Sequence[BreachRule]) -> str:
    """Returns the reading guide: what the numbers, lines, bands and triangles mean.

    The CUSUM and the significance of drift are explained when the policy uses them.
    """
    days = discordance_baseline_days(policy)
    cusums = "".join(_cusum_guide(rule) for rule in site_cusum_rules(policy))
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
first {days} days. Seven red days in a row open a CRITICAL breach: review the model at
that site.</li>{cusums}
<li><b>Score drift</b> (PSI, population stability index of the AI score histogram against the
first 14 days): below 0.1 no shift, 0.1 to 0.25 moderate, above 0.25 major. A drift without a
change in discordance can still mean a new scanner or protocol.{_significance_guide(policy)}</li>
<li><b>Review candidates</b> are AI-positive studies the report called negative and nobody
interacted with the alert: candidates for a secondary read.</li>
</ul>
<p class="legend-sites">{_site_legend(data.sites)}</p></div>"""


def _cusum_guide(rule: BreachRule) -> str:
    assert rule.shift is not None and rule.arl0_days is not None  # a CUSUM rule has both
    label = KPI_LABELS.get(rule.kpi, rule.kpi)
    direction, case = (
        ("fallen", "a study that lowers it")
        if rule.comparator.below
        else ("risen", "a study that raises it")
    )
    return (
        f"<li><b>CUSUM</b> (rule <code>{escape(rule.id)}</code>): day after day, the statistic "
        f"accumulates the evidence that the site's {escape(label)} has {direction} by "
        f"{rule.shift:g} ({rule.shift * 100:g} points) from its first {rule.baseline_days} "
        f"days: {case} (a discordant study, a false positive) adds to it, any other takes a "
        "little away, and it never goes below 0. "
        "It signals when it reaches the limit h (the dashed red line), set so that a site where "
        f"nothing changed signals once in {rule.arl0_days:g} days on average (the in-control "
        f"average run length), and opens a {rule.severity} breach; it stays at the limit while "
        f"the shift lasts, and the breach resolves after {rule.resolve_after} days below "
        "it (a green triangle).</li>"
    )


def _significance_guide(policy: Sequence[BreachRule]) -> str:
    levels = sorted(
        {1.0 - r.confidence for r in policy if r.evidence is Evidence.SIGNIFICANCE}, reverse=True
    )
    if not levels:
        return ""
    below = " or ".join(f"{level:.2g}" for level in levels)
    return (
        " A drift rule breaches only when the PSI is past its band <i>and</i> the chi-square "
        "test of the window's scores against the reference gives a p-value below "
        f"{below}: on a few hundred scores, the PSI of a stable model crosses the bands by "
        "chance."
    )


def _site_legend(sites: Sequence[str]) -> str:
    return "".join(
        f'<span><i style="background:{site_colour(sites, s)}"></i>{escape(s)}</span>' for s in sites
    )


def _breach_row(b: BreachHistory, data: ReportData, policy: Sequence[BreachRule]) -> str:
    row = b.opened
    partial = ""
    if data.period is not None and row["window_end_ms"] > data.period[1]:
        partial = '<br><span class="meta">reaches past the data: fewer days</span>'
    if b.resolved is None:
        state = '<span class="badge OPEN">OPEN</span>'
    else:
        resolved_on = format_day(b.resolved["window_end_ms"] - 1)
        state = f'<span class="badge RESOLVED">RESOLVED</span> {resolved_on}'

    return (
        f'<tr><td><span class="badge {row["severity"]}">{row["severity"]}</span></td>'
        f'<td class="nw">{state}</td><td class="nw"><code>{escape(row["rule_id"])}</code></td>'
        f'<td class="nw">{escape(row["algorithm_name"])}</td>'
        f'<td class="nw">{escape(row["site_id"])}</td>'
        f'<td class="nw">{escape(row["window_size"])} ending '
        f"{format_day(row['window_end_ms'] - 1)}{partial}</td>"
        f'<td class="r">{format_breach_value(row, policy)}</td>'
        f'<td class="r">{format_breach_threshold(row, policy)}</td>'
        f'<td class="evidence">{escape(row["evidence"])}</td></tr>'
    )


def _breach_table(
    rows: Sequence[BreachHistory], data: ReportData, policy: Sequence[BreachRule]
) -> str:
    head = (
        "<table><tr><th>severity</th><th>state</th><th>rule</th><th>model</th><th>site</th>"
        '<th>opened on window</th><th class="r">value</th><th class="r">threshold</th>'
        "<th>evidence (the final KPI windows behind it)</th></tr>"
    )
    return head + "".join(_breach_row(b, data, policy) for b in rows) + "</table>"


def breaches_section(data: ReportData, policy: Sequence[BreachRule]) -> str:
    """Returns every breach opened in the period, the open ones first, with evidence."""
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
        html.append("<h3>Open</h3>" + _breach_table(open_rows, data, policy))
    if closed:
        html.append(
            f"<details><summary>{len(closed)} resolved breach(es)</summary>"
            + _breach_table(closed, data, policy)
            + "</details>"
        )
    return "".join(html)


def model_section(
    data: ReportData, algorithm: str, finding: str, policy: Sequence[BreachRule]
) -> str:
    """Returns the charts of one model: signal, discordance, alerts, drift, turnaround.

    Beside the sustained-discordance charts, the path of each CUSUM rule on discordance
    by site (when the policy has one).
    """
    baseline_days = discordance_baseline_days(policy)
    panel = '<div class="panel">{}</div>'.format
    signal = "".join(
        panel(rate_chart(data, kpi, algorithm, finding, title))
        for kpi, title in (
            ("alert_ppv", "Alert PPV (7 days): alerts the report confirms"),
            ("sensitivity", "Sensitivity (7 days)"),
            ("specificity", "Specificity (7 days)"),
        )
    )
    discordance = "".join(
        panel(discordance_chart(data, algorithm, finding, site, policy)) for site in data.sites
    )
    cusums = "".join(
        f"<h3>CUSUM of daily {escape(KPI_LABELS.get(rule.kpi, rule.kpi))} "
        f"(rule <code>{escape(rule.id)}</code>)</h3>"
        f'<p class="caption">{escape(_cusum_caption(rule))}</p><div class="grid">'
        + "".join(panel(cusum_chart(data, rule, algorithm, finding, site)) for site in data.sites)
        + "</div>"
        for rule in site_cusum_rules(policy)
    )
    response = panel(
        rate_chart(
            data,
            "alert_response_rate",
            algorithm,
            finding,
            "Alerts answered within 15 min (7 days)",
            wide=True,
        )
    ) + panel(response_time_chart(data, algorithm, finding))
    drift = panel(psi_chart(data, algorithm, finding)) + panel(
        rate_chart(
            data,
            "coverage",
            algorithm,
            finding,
            "Coverage: reported eligible studies the AI read (7 days)",
            wide=True,
        )
    )
    tat = "".join(panel(tat_chart(data, algorithm, finding, site)) for site in data.sites)
    versions = "/".join(data.versions.get(algorithm, []))
    return f"""
<h2>{escape(algorithm)} {escape(versions)} &mdash; {escape(finding)}</h2>
<p class="legend-sites">{_site_legend(data.sites)}</p>
<h3>Signal quality against the final report</h3>
<div class="grid">{signal}</div>
<h3>Sustained discordance (baseline: the first {baseline_days} days of each site)</h3>
<div class="grid">{discordance}</div>{cusums}
<h3>Alert usefulness</h3>
<div class="grid2">{response}</div>
<h3>Score drift and coverage</h3>
<div class="grid2">{drift}</div>
<h3>Reporting impact: turnaround of AI-positive vs AI-negative studies</h3>
<p class="caption">Exam completed to first final report, median of each 7 days (p90 over
the period in the scorecard). When the alert reprioritises the worklist, AI-positive
studies should be reported sooner.</p>
<div class="grid">{tat}</div>"""


def _cusum_caption(rule: BreachRule) -> str:
    return (
        f"The statistic of each site after its first {rule.baseline_days} days, against its "
        "control limit h (dashed red line; red dots: days at the limit). It is recomputed "
        "here from the final daily values in the audit tables; the pipeline judged each day "
        "on its first final value, so where a late report revised a day the statistic and h "
        "can differ a little from the breach's (listed under Breaches)."
    )


def reviews_section(data: ReportData) -> str:
    """Returns the review candidates: counts by site and model, the most recent ones."""
    counts = "".join(
        f"<tr><td>{escape(site)}</td><td>{escape(algorithm)}</td><td class='r'>{n}</td></tr>"
        for (site, algorithm), n in sorted(data.review_counts.items())
    )
    examples = "".join(
        f"<tr><td>{escape(r['site_id'])}</td><td><code>{escape(r['study_uid'])}</code></td>"
        f"<td>{escape(r['algorithm_name'])}</td><td class='r'>{format_number(r['score'])}</td>"
        f"<td>{escape(str(r['report_label']))}</td><td>{escape(str(r['alert_channel']))}, "
        f"{escape(str(r['alert_final_state']))}</td><td>{format_minute(r['report_final_at_ms'])}</td></tr>"
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


def policy_section(policy: Sequence[BreachRule], version: int | None) -> str:
    """Returns the breach policy as a table of its rules ("" without a policy)."""
    if not policy:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(r.id)}</code></td>"
        f"<td>{_badge(r.severity)}</td>"
        f"<td>{escape(r.kpi)} over {escape(r.window)}</td>"
        f"<td>{escape(_rule_test(r))}</td>"
        f"<td class='r'>{r.open_after} / {r.resolve_after}</td>"
        f"<td>{escape(r.description)}</td></tr>"
        for r in policy
    )
    return f"""
<h2>Breach policy{f" (version {version})" if version is not None else ""}</h2>
<table><tr><th>rule</th><th>severity</th><th>KPI</th><th>breaching when</th>
<th class="r">open / resolve after</th><th>why</th></tr>{rows}</table>"""


def _badge(severity: str) -> str:
    return f'<span class="badge {escape(severity)}">{escape(severity)}</span>'


def _rule_test(rule: BreachRule) -> str:
    floor = f" (at least {rule.min_denominator:g} cases)"
    if rule.kind is RuleKind.BASELINE:
        return f"above the upper 95% bound of the first {rule.baseline_days} days" + floor
    if rule.kind is RuleKind.CUSUM:
        return (
            f"its Bernoulli CUSUM, accumulating the evidence of a "
            f"{'fall' if rule.comparator.below else 'rise'} of {_as_written(rule.shift)}"
            f" over the first {rule.baseline_days} days (at least "
            f"{rule.min_baseline_denominator:g} cases), reaches the limit h set by an in-control"
            f" average run length of {_as_written(rule.arl0_days)} days; it stays at h while"
            " the shift lasts"
        )
    stat = "" if rule.statistic == "value" else f"{rule.statistic} "
    test = f"{stat}{rule.comparator} {_as_written(rule.threshold)}"
    if rule.evidence is Evidence.INTERVAL:
        test += f", its one-sided {rule.confidence:.0%} Wilson bound too"
    elif rule.evidence is Evidence.SIGNIFICANCE:
        test += (
            f", and a chi-square p-value against the reference below {1.0 - rule.confidence:.2g}"
        )
    return test + floor


# The policy model holds every threshold as a float: print 900000, not 900000.0, as the
# policy file writes it.
def _as_written(value: float | None) -> str:
    return str(int(value)) if value is not None and value.is_integer() else str(value)
