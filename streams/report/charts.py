"""The report's charts: KPI series of :class:`~streams.report.data.ReportData` as SVG.

Each builder returns one ``<svg>`` (drawn by :func:`streams.report.svg.line_chart`) for
one model: rates with their Wilson 95% bands by site, daily discordance against the
site's baseline as the sustained-discordance rule sees it, the statistic of a CUSUM rule
against its control limit, score drift (PSI) against its thresholds, time to response,
report turnaround. Breaches of the charted KPI are marked where they opened. Every series
is final 7-day windows unless named otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from schemas.records import KpiValue
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS, format_day, format_percent
from streams.core.kpi.breach import BreachRule, cusum_trace
from streams.core.kpi.stats import wilson_interval
from streams.report.data import KpiPoint, ReportData
from streams.report.format import KPI_LABELS
from streams.report.policy import discordance_baseline_days, discordance_baseline_rule
from streams.report.style import NEGATIVE_COLOUR, POSITIVE_COLOUR, site_colour
from streams.report.svg import ALARM, Band, HLine, Marker, Series, Zone, line_chart

__all__ = [
    "cusum_chart",
    "cusum_path",
    "discordance_chart",
    "judged_values",
    "psi_chart",
    "rate_chart",
    "response_time_chart",
    "tat_chart",
]

RESOLVED_COLOUR = "#047857"
"""Markers of resolutions (the report's ``--ok``)."""


def _x_range(data: ReportData) -> tuple[int, int]:
    if data.period is None:
        return (0, DAY_MS)
    return data.period


def _inside(points: Sequence[KpiPoint], period: tuple[int, int]) -> list[KpiPoint]:
    # Rolling windows that reach before the first or after the last day of data hold
    # only part of their days: leave them out rather than plot thin, noisy values.
    return [p for p in points if p.start_ms >= period[0] and p.end_ms <= period[1]]


def _markers(
    data: ReportData,
    kpis: set[str],
    algorithm: str,
    site: str | None = None,
    *,
    rules: Collection[str] | None = None,
    resolutions: bool = False,
) -> list[Marker]:
    """Returns a marker where each breach of ``kpis`` opened.

    Args:
        site: only that site's breaches (a single-site chart).
        rules: only the breaches of these rule ids (None: of any rule).
        resolutions: also a marker, without line, where each one resolved.
    """
    out = []
    for b in data.breaches:
        if b["kpi"] not in kpis or b["algorithm_name"] != algorithm:
            continue
        if site is not None and b["site_id"] != site:
            continue
        if rules is not None and b["rule_id"] not in rules:
            continue
        state = (
            "open"
            if b.resolved is None
            else f"resolved {format_day(b.resolved['window_end_ms'] - 1)}"
        )
        label = (
            f"{b['severity']} {b['rule_id']} at {b['site_id']}, window ending "
            f"{format_day(b['window_end_ms'] - 1)} ({state})"
        )
        if site is None:  # several sites in one chart: the marker takes the site's colour
            colour = site_colour(data.sites, b["site_id"])
        else:
            colour = "#dc2626" if b["severity"] == "CRITICAL" else "#d97706"
        # Warnings can be many: a triangle each, a line down the plot only for critical.
        out.append(Marker(b["window_end_ms"], label, colour, b["severity"] == "CRITICAL"))
        if resolutions and b.resolved is not None:
            end = b.resolved["window_end_ms"]
            label = (
                f"{b['rule_id']} at {b['site_id']} resolved, window ending {format_day(end - 1)}"
            )
            out.append(Marker(end, label, RESOLVED_COLOUR, False))
    return out


def rate_chart(
    data: ReportData, kpi: str, algorithm: str, finding: str, title: str, *, wide: bool = False
) -> str:
    """Returns the 7-day ``kpi`` (a proportion) of one model, a line and band per site.

    Args:
        wide: drawn two to a row (a wider canvas) rather than three.
    """
    series = []
    period = _x_range(data)
    for site in data.sites:
        points = _inside(data.points(kpi, "7d", site, algorithm, finding), period)
        colour = site_colour(data.sites, site)
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


def discordance_chart(
    data: ReportData,
    algorithm: str,
    finding: str,
    site: str,
    policy: Sequence[BreachRule],
    *,
    with_model: bool = False,
) -> str:
    """Returns one site's daily discordance with the baseline of the discordance rule.

    Days above the baseline's upper bound, after the baseline, are drawn in red; the
    breaches of the policy's sustained-discordance rule are marked (of any discordance
    rule without a policy).

    Args:
        policy: the breach rules; the sustained-discordance one names the baseline length
            (the first days of the site's data).
        with_model: name the model in the title (the chart stands alone, above).
    """
    rule = discordance_baseline_rule(policy)
    baseline_days = discordance_baseline_days(policy)
    # Mirrors the sustained-discordance rule: the baseline pools the site's daily
    # windows of its first ``baseline_days`` days; the line is its upper Wilson bound.
    points = [
        p
        for p in data.points("discordance_rate", "1d", site, algorithm, finding)
        if data.period is None or data.period[0] <= p.start_ms < data.period[1]
    ]
    colour = site_colour(data.sites, site)
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
            if rule is not None:
                high = _policy_bound(data, rule.id, algorithm, site) or high
            hlines = [
                HLine(num / den, f"baseline {format_percent(num / den)}", "#6b7280", False, True),
                HLine(high, f"upper 95% {format_percent(high)}", "#dc2626"),
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
        markers=_markers(
            data, {"discordance_rate"}, algorithm, site, rules=None if rule is None else {rule.id}
        ),
        legend=False,
    )


# Only the baseline rule's breaches hold the bound: a CUSUM breach on the same series
# holds its control limit, which is no proportion.
def _policy_bound(data: ReportData, rule_id: str, algorithm: str, site: str) -> float | None:
    for b in data.breaches:
        if (
            b["rule_id"] == rule_id
            and b["algorithm_name"] == algorithm
            and b["site_id"] == site
            and b["threshold"] is not None
        ):
            return float(b["threshold"])
    return None


def judged_values(
    data: ReportData, rule: BreachRule, algorithm: str, finding: str, site: str
) -> list[KpiValue]:
    """Returns one site's final values of a rule's KPI and window, as the evaluator takes them.

    ``kpi_final`` holds each window's latest revision, and the evaluator skips revisions
    after the first: each is presented as the window's first final value. (The pipeline
    judged the first ones; a revised day can move a CUSUM's statistic, and the baseline
    its limit, a little from the breach's values.)
    """
    return [
        KpiValue(
            kpi=rule.kpi,
            window_size=rule.window,
            window_start_ms=p.start_ms,
            window_end_ms=p.end_ms,
            site_id=site,
            algorithm_name=algorithm,
            algorithm_version="*",
            finding_code=finding,
            numerator=p.numerator,
            denominator=p.denominator,
            value=p.value,
            final=True,
            revision=1,
        )
        for p in data.points(rule.kpi, rule.window, site, algorithm, finding)
    ]


def cusum_path(
    data: ReportData, rule: BreachRule, algorithm: str, finding: str, site: str
) -> list[tuple[int, float, float]]:
    """Returns ``(window_end_ms, statistic, limit)`` of a CUSUM rule on one site's series.

    The rule's statistic for every day after its baseline (``cusum_trace``), over the
    final daily values of the audit tables (``judged_values``), placed at the end of its
    day like the daily points of the other charts.
    """
    values = judged_values(data, rule, algorithm, finding, site)
    end_of = {v.window_start_ms: v.window_end_ms for v in values}
    return [
        (end_of[start], statistic, limit) for start, statistic, limit in cusum_trace(rule, values)
    ]


def cusum_chart(
    data: ReportData,
    rule: BreachRule,
    algorithm: str,
    finding: str,
    site: str,
    *,
    with_model: bool = False,
) -> str:
    """Returns the path of a CUSUM rule's statistic at one site, with its control limit.

    The days after the rule's baseline, to the end of the period, and the limit as a
    dashed red line (its value in the title); days at the limit are drawn as red dots,
    the rule's breaches marked where they opened and resolved.

    Args:
        rule: a ``kind = "cusum"`` rule on the daily series of the report.
        with_model: name the model in the title (the chart stands alone, above).
    """
    # The whole series feeds the statistic (the baseline starts at the first day the
    # pipeline saw); only the days inside the report's period are drawn.
    period = _x_range(data)
    path = [t for t in cusum_path(data, rule, algorithm, finding, site) if t[0] <= period[1]]
    hlines: list[HLine] = []
    at_limit: list[tuple[int, float | None]] = []
    x_range = period
    limit = ""
    if path:
        # The limit is named in the title: a label at either end of its line would sit
        # on the days at the limit or on the climb to it.
        hlines = [HLine(path[-1][2], "", ALARM)]
        limit = f", limit h = {path[-1][2]:.3g}"
        at_limit = [(x, s) for x, s, h in path if s >= h]
        x_range = (min(path[0][0] - DAY_MS, period[1] - DAY_MS), period[1])
    series = [
        Series("CUSUM", [(x, s) for x, s, _ in path], site_colour(data.sites, site)),
        Series(
            "at the limit",
            at_limit,
            ALARM,
            dots=True,
            highlight=frozenset(x for x, _ in at_limit),
        ),
    ]
    return line_chart(
        series,
        x_range=x_range,
        title=(
            f"{algorithm} at {site}: CUSUM{limit}"
            if with_model
            else f"{site}: CUSUM of daily {KPI_LABELS.get(rule.kpi, rule.kpi)}{limit}"
        ),
        hlines=hlines,
        markers=_markers(data, {rule.kpi}, algorithm, site, rules={rule.id}, resolutions=True),
        legend=False,
        empty_text=(
            f"no statistic yet: the {rule.baseline_days}-day baseline needs "
            f"{rule.min_baseline_denominator:g} cases"
        ),
    )


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
                site_colour(data.sites, site),
            )
        )
    return out


def psi_chart(data: ReportData, algorithm: str, finding: str, *, with_model: bool = False) -> str:
    """Returns the 7-day score drift (PSI) of one model by site, with its thresholds.

    Args:
        with_model: name the model in the title and the sites in a legend (the chart
            stands alone, above).
    """
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


def response_time_chart(data: ReportData, algorithm: str, finding: str) -> str:
    """Returns the 7-day time to first response (p50, p90) of one model by site."""
    series = _site_lines(data, "time_to_response", algorithm, finding, MINUTE_MS, "p50")
    series += [
        Series(s.name, p90.points, s.color, dashed=True, width=1.1)
        for s, p90 in zip(
            series,
            _site_lines(data, "time_to_response", algorithm, finding, MINUTE_MS, "p90"),
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


def tat_chart(data: ReportData, algorithm: str, finding: str, site: str) -> str:
    """Returns one site's 7-day report turnaround p50, AI-positive vs AI-negative."""
    period = _x_range(data)
    series = []
    for kpi, name, colour in (
        ("report_tat_ai_positive", "AI positive", POSITIVE_COLOUR),
        ("report_tat_ai_negative", "AI negative", NEGATIVE_COLOUR),
    ):
        points = _inside(data.points(kpi, "7d", site, algorithm, finding), period)
        series.append(Series(name, [(p.end_ms, _div(p.p50, HOUR_MS)) for p in points], colour))
    return line_chart(
        series,
        x_range=period,
        title=f"{site}: report turnaround p50, hours",
        legend=True,
    )
