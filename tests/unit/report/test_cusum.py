"""The CUSUM rule in the report: its chart, its breach values, and the discordance bound.

One site of one model with hand-made daily discordance: 10 baseline days at 10 %, then
20 days at 30 %, and the CUSUM breach the pipeline would have opened on it.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.units import DAY_MS
from streams.core.kpi.breach import BreachRule, cusum_trace
from streams.report.charts import judged_values
from streams.report.data import BreachHistory, KpiPoint, ReportData
from streams.report.sections import (
    attention_section,
    breaches_section,
    model_section,
)

SITE, MODEL, FINDING = "site-01", "ich-detect", "ICH"
BASELINE_DAYS, DAYS = 10, 30

CUSUM = BreachRule(
    id="discordance-cusum",
    kpi="discordance_rate",
    window="1d",
    kind="cusum",
    shift=0.03,
    arl0_days=1095,
    baseline_days=BASELINE_DAYS,
    min_baseline_denominator=300,
    severity="CRITICAL",
    resolve_after=7,
)
SUSTAINED = BreachRule(
    id="sustained-discordance",
    kpi="discordance_rate",
    window="1d",
    kind="baseline",
    baseline_days=BASELINE_DAYS,
    severity="CRITICAL",
    open_after=7,
    resolve_after=7,
)


def _points() -> list[KpiPoint]:
    out = []
    for day in range(DAYS):
        events = 5.0 if day < BASELINE_DAYS else 15.0
        out.append(
            KpiPoint(
                start_ms=day * DAY_MS,
                end_ms=(day + 1) * DAY_MS,
                numerator=events,
                denominator=50.0,
                value=events / 50.0,
                ci_low=None,
                ci_high=None,
                p50=None,
                p90=None,
            )
        )
    return out


def _trace() -> list[tuple[int, float, float]]:
    """The rule's statistic on the points, computed by the core (what the chart must draw)."""
    return cusum_trace(CUSUM, judged_values(_data([]), CUSUM, MODEL, FINDING, SITE))


def _breach(trace: list[tuple[int, float, float]]) -> dict[str, Any]:
    start, statistic, limit = next(t for t in trace if t[1] >= t[2])
    return {
        "breach_id": "b1",
        "state": "OPEN",
        "rule_id": CUSUM.id,
        "kpi": "discordance_rate",
        "severity": "CRITICAL",
        "window_size": "1d",
        "window_start_ms": start,
        "window_end_ms": start + DAY_MS,
        "site_id": SITE,
        "algorithm_name": MODEL,
        "algorithm_version": "*",
        "finding_code": FINDING,
        "value": statistic,
        "threshold": limit,
        "evidence": "opened: reached the limit h",
    }


def _data(breaches: list[dict[str, Any]]) -> ReportData:
    return ReportData(
        source="test",
        period=(0, DAYS * DAY_MS),
        sites=[SITE],
        models=[(MODEL, FINDING)],
        series={("discordance_rate", "1d", SITE, MODEL, FINDING): _points()},
        breaches=[BreachHistory(row, None) for row in breaches],
    )


def svg_titled(html: str, title: str) -> str:
    """The one chart of ``html`` whose title starts with ``title``."""
    found = re.findall(rf'<svg [^>]*aria-label="{re.escape(title)}[^"]*">.*?</svg>', html)
    assert len(found) == 1, (title, len(found))
    return str(found[0])


def polyline_points(svg: str) -> int:
    """The number of points of an SVG's lines (one per value drawn)."""
    return sum(len(p.split()) for p in re.findall(r'<polyline points="([^"]*)"', svg))


def test_the_cusum_chart_draws_the_rules_statistic_against_its_limit() -> None:
    trace = _trace()
    limit = trace[-1][2]
    breach = _breach(trace)
    html = model_section(_data([breach]), MODEL, FINDING, [SUSTAINED, CUSUM])

    assert "CUSUM of daily AI-report discordance (rule <code>discordance-cusum</code>)" in html
    svg = svg_titled(html, f"{SITE}: CUSUM of daily AI-report discordance")
    # Every day after the baseline, in one line; the limit named and drawn (dashed red).
    assert len(trace) == DAYS - BASELINE_DAYS
    assert polyline_points(svg) == len(trace)
    assert f"limit h = {limit:.3g}" in svg
    assert 'stroke="#dc2626" stroke-width="1.2" stroke-dasharray="5 3"' in svg
    # A red dot for each day at the limit, a marker where the breach opened.
    assert svg.count('r="3" fill="#dc2626"') == sum(1 for _, s, h in trace if s >= h) > 0
    assert "CRITICAL discordance-cusum at site-01" in svg


def test_no_cusum_chart_without_a_cusum_rule() -> None:
    html = model_section(_data([]), MODEL, FINDING, [SUSTAINED])
    assert "CUSUM" not in html


def test_a_cusum_breach_reads_as_its_statistic_against_its_limit() -> None:
    trace = _trace()
    breach = _breach(trace)
    value = f"{breach['value']:.3g}"
    data = _data([breach])
    policy = [SUSTAINED, CUSUM]

    attention = attention_section(data, policy)
    assert f"CUSUM {value} against limit {value}" in attention
    assert "%" not in attention.split("</ul>")[0]  # no proportion in the sentence
    # The chart behind it is the statistic's path, not the daily discordance.
    svg_titled(attention, f"{MODEL} at {SITE}: CUSUM, limit h = {trace[-1][2]:.3g}")
    assert "daily discordance vs baseline" not in attention

    breaches = breaches_section(data, policy)
    assert f'<td class="r">CUSUM {value}</td><td class="r">limit {value}</td>' in breaches
    # Without the policy the report cannot tell: the KPI's unit, as before.
    assert f"{breach['value'] * 100:.1f}%" in breaches_section(data, ())


def test_the_discordance_bound_is_never_a_cusum_limit() -> None:
    # The CUSUM breach is the only discordance breach of the series: its threshold (the
    # control limit, about 5) was once drawn as the sustained rule's bound, "upper 95% 5xx%".
    html = model_section(_data([_breach(_trace())]), MODEL, FINDING, [SUSTAINED, CUSUM])
    svg = svg_titled(html, f"{SITE}: daily discordance")
    bounds = [float(b) for b in re.findall(r"upper 95% ([0-9.]+)%", svg)]
    assert len(bounds) == 1 and 10.0 < bounds[0] < 15.0
    # Its markers are the sustained rule's breaches only (the CUSUM has its own chart).
    assert "discordance-cusum" not in svg
