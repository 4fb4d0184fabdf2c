"""The governance report: self-contained HTML from the audit tables, and its charts."""

from __future__ import annotations

import json
import re
import time

from sinks.query import ChdbBackend
from streams.replay.demo import DemoRun
from streams.report.data import load_report_data
from streams.report.page import load_policy_rules, outlier_rates, render_report
from streams.report.svg import Band, HLine, Marker, Series, line_chart, nice_ticks
from tests.unit.conftest import POLICY

DAY = 86_400_000


def test_report_from_the_small_demo(small_demo: DemoRun) -> None:
    backend = ChdbBackend(small_demo.options.chdb_path)
    try:
        data = load_report_data(backend, "test")
    finally:
        backend.close()
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
    # Per model: 3 signal charts, daily discordance per site (2), 2 alert, 2 drift and
    # coverage, turnaround per site (2); above them, the charts behind the critical breaches.
    models = html.split("Scorecard per model and site")[1]
    assert len(re.findall(r"<svg ", models)) == 2 * (3 + 2 + 2 + 2 + 2)
    attention = html.split("What needs attention")[1].split("How to read")[0]
    assert 1 <= attention.count("<svg ") <= 3
    for heading in (
        "What needs attention",
        "How to read this report",
        "Breaches",
        "Scorecard per model and site",
        "Review candidates",
        "Breach policy (version 2)",
        "Reproduce these numbers",
    ):
        assert heading in html
    # The drifted series leads the attention list.
    assert "ich-detect at site-02" in attention and "CRITICAL" in attention


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
