"""The governance report: self-contained HTML from the audit tables, and its charts."""

from __future__ import annotations

import json
import re
import time

from sinks.query import ChdbBackend
from streams.core.kpi.breach import BreachRule, RuleKind, cusum_trace
from streams.replay.demo import DemoRun
from streams.report.charts import judged_values
from streams.report.data import ReportData, load_report_data
from streams.report.page import load_policy_rules, outlier_rates, render_report
from streams.report.svg import Band, HLine, Marker, Series, line_chart, nice_ticks
from tests.unit.conftest import BASELINE_DAYS, POLICY
from tests.unit.report.test_cusum import polyline_points, svg_titled

DAY = 86_400_000


def _small_demo_data(small_demo: DemoRun) -> ReportData:
    backend = ChdbBackend(small_demo.options.chdb_path)
    try:
        return load_report_data(backend, "test")
    finally:
        backend.close()


def test_report_from_the_small_demo(small_demo: DemoRun) -> None:
    data = _small_demo_data(small_demo)
    rules, version = load_policy_rules(POLICY)
    html = render_report(
        data, generated_at_ms=int(time.time() * 1000), policy=rules, policy_version=version
    )

    assert data.sites == ["site-01", "site-02"]
    assert data.models == [("ich-detect", "ICH"), ("pe-detect", "PE")]
    # event_log keeps one row per event id: redelivered duplicates collapse.
    with small_demo.options.events_path.open(encoding="utf-8") as handle:
        distinct = {json.loads(line)["event_id"] for line in handle}
    assert data.totals["events"] == len(distinct) < small_demo.replay.events
    # Self-contained: no script, no external resource; one SVG per chart.
    assert "<script" not in html and "https://" not in html and "<link" not in html
    # Per model: 3 signal charts, daily discordance and the CUSUMs of discordance and of
    # specificity per site (2 + 2 + 2), 2 alert, 2 drift and coverage, turnaround per site
    # (2); above them, the charts behind the critical breaches.
    models = html.split("Scorecard per model and site")[1]
    assert len(re.findall(r"<svg ", models)) == 2 * (3 + 2 + 2 + 2 + 2 + 2 + 2)
    attention = html.split("What needs attention")[1].split("How to read")[0]
    assert 1 <= attention.count("<svg ") <= 3
    for heading in (
        "What needs attention",
        "How to read this report",
        "Breaches",
        "Scorecard per model and site",
        "Review candidates",
        "Breach policy (version 3)",
        "Reproduce these numbers",
    ):
        assert heading in html
    # The drifted series leads the attention list.
    assert "ich-detect at site-02" in attention and "CRITICAL" in attention
    # A CUSUM breach holds the statistic and its limit, not proportions; the discordance
    # charts' bound is the sustained rule's, never a CUSUM limit.
    for b in data.breaches:
        if b["rule_id"] == "discordance-cusum":
            value, limit = f"{b['value']:.3g}", f"{b['threshold']:.3g}"
            assert f'<td class="r">CUSUM {value}</td><td class="r">limit {limit}</td>' in html
    assert all(float(x) < 50 for x in re.findall(r"upper 95% ([0-9.]+)%", html))


def test_each_site_has_the_cusum_of_the_policy_rule(small_demo: DemoRun) -> None:
    data = _small_demo_data(small_demo)
    assert data.period is not None
    rules, version = load_policy_rules(POLICY)
    # The demo's first 8 days hold about 250 labelled studies a site, under the policy's
    # 300 (and its 60 days are more than the run): the rule with a baseline that fits.
    shipped = next(rule for rule in rules if rule.kind is RuleKind.CUSUM)
    cusum = BreachRule.model_validate(
        {
            **shipped.model_dump(),
            "baseline_days": BASELINE_DAYS,
            "min_baseline_denominator": 100,
        }
    )
    policy = [cusum if rule.id == cusum.id else rule for rule in rules]
    html = render_report(data, generated_at_ms=0, policy=policy, policy_version=version)

    for algorithm, finding in data.models:
        section = html.split(f"<h2>{algorithm} ")[1].split("<h2>")[0]
        for site in data.sites:
            values = judged_values(data, cusum, algorithm, finding, site)
            trace = cusum_trace(cusum, values)
            drawn = [t for t in trace if t[0] + DAY <= data.period[1]]
            svg = svg_titled(section, f"{site}: CUSUM of daily AI-report discordance")
            assert len(drawn) >= 2, (algorithm, site)
            assert polyline_points(svg) == len(drawn), (algorithm, site)
            assert f"limit h = {trace[-1][2]:.3g}" in svg
            at_limit = svg.count('r="3" fill="#dc2626"')
            assert at_limit == sum(1 for _, s, h in drawn if s >= h)
            if (algorithm, site) == ("ich-detect", "site-02"):  # the drifted series
                assert at_limit > 0


def test_outliers_need_an_interval_apart_from_every_other_site() -> None:
    def row(site: str, tp: int, fp: int) -> dict[str, object]:
        return {
            "algorithm_name": "m",
            "site_id": site,
            "tp": tp,
            "fp": fp,
            "fn": 10,
            "tn": 900,
            "labelled": tp + fp + 910,
            "alerts_responded_in_sla": 1,
            "alerts_raised": 1,
        }

    rows = [row("a", 100, 100), row("b", 100, 110), row("c", 100, 300)]
    flagged = outlier_rates(rows)
    assert ("m", "c", "ppv") in flagged
    assert not any(site in {"a", "b"} for _, site, name in flagged if name == "ppv")
    # With only two sites there is no telling which one is off.
    assert not [f for f in outlier_rates(rows[1:]) if f[2] == "ppv"]


def test_line_chart_breaks_lines_at_gaps_and_draws_references() -> None:
    points = [(0, 0.5), (DAY, 0.6), (2 * DAY, None), (3 * DAY, 0.4), (4 * DAY, 0.45)]
    svg = line_chart(
        [Series("s", points, "#123456", band=Band([(x, 0.3, 0.7) for x, _ in points], "#123456"))],
        x_range=(0, 4 * DAY),
        title="t <&>",
        percent=True,
        hlines=[HLine(0.25, "limit")],
        markers=[Marker(2 * DAY, "opened")],
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2  # the gap splits the line
    assert "t &lt;&amp;&gt;" in svg and ">limit<" in svg and "<title>opened</title>" in svg
    assert ">50%<" in svg or ">40%<" in svg
    empty = line_chart([], x_range=(0, DAY), title="none")
    assert "no data in this period" in empty


def test_nice_ticks_are_round() -> None:
    assert nice_ticks(0, 1) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0, 37)[-1] >= 37
