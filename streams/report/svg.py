"""Small inline-SVG time-series charts for the governance report (no JS, no library).

One function, :func:`line_chart`, draws what the report needs: lines with optional
95 % interval bands, dashed reference lines (thresholds, baselines) with shaded zones,
points, and markers where breaches opened or resolved. X is event time in epoch
milliseconds (UTC days on the axis); ``None`` values break a line rather than bridge
a gap. The SVG scales with its container (``viewBox``) and uses only presentation
attributes plus the report's CSS classes, so it prints and renders anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from schemas.units import DAY_MS, utc

__all__ = ["Band", "HLine", "Marker", "Series", "Zone", "line_chart", "nice_ticks"]

Point = tuple[int, float | None]


@dataclass(frozen=True, slots=True)
class Band:
    """A shaded interval (e.g. Wilson 95 %): ``(x_ms, low, high)`` points."""

    points: Sequence[tuple[int, float | None, float | None]]
    color: str
    opacity: float = 0.15


@dataclass(frozen=True, slots=True)
class Series:
    """One line (and optionally its band), drawn in ``color``.

    Attributes:
        dashed: a dashed line (e.g. p90 beside a solid p50).
        dots: draw a dot at each point instead of a line (daily values).
        highlight: x values whose dot is drawn in the alarm colour (days above a bound).
    """

    name: str
    points: Sequence[Point]
    color: str
    band: Band | None = None
    dashed: bool = False
    dots: bool = False
    width: float = 1.8
    highlight: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class HLine:
    """A horizontal reference line, labelled at the right end (unless the label is empty)."""

    y: float
    label: str
    color: str = "#6b7280"
    dashed: bool = True
    label_left: bool = False
    """Label at the left end (when two lines are close, label one on each side)."""


@dataclass(frozen=True, slots=True)
class Zone:
    """A horizontal shaded zone between two y values (e.g. PSI 0.1-0.25 = moderate)."""

    low: float
    high: float
    color: str
    opacity: float = 0.08


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical marker at ``x_ms`` (a breach opening or resolving)."""

    x_ms: int
    label: str
    color: str = "#dc2626"
    line: bool = True
    """Also draw a dotted vertical line down the plot."""


ALARM = "#dc2626"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Returns round tick values covering ``[low, high]`` (about ``count`` of them)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) if low else 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt_tick(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.0f}%"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _day_label(ms: int) -> str:
    return utc(ms).strftime("%d %b")


def line_chart(
    series: Sequence[Series],
    *,
    x_range: tuple[int, int],
    title: str = "",
    y_range: tuple[float, float] | None = None,
    percent: bool = False,
    hlines: Sequence[HLine] = (),
    zones: Sequence[Zone] = (),
    markers: Sequence[Marker] = (),
    width: int = 420,
    height: int = 210,
    legend: bool = True,
    empty_text: str = "no data in this period",
) -> str:
    """Returns one chart as an ``<svg>`` element.

    Args:
        series: the lines, drawn in order (bands first, under every line).
        x_range: first and last x (epoch ms) of the axis.
        title: shown above the plot area.
        y_range: fixed y axis; default: from the data, bands and reference lines.
        percent: label the y axis in per cent (values are proportions 0..1).
        hlines, zones, markers: reference lines, shaded y zones, vertical markers.
        width, height: the viewBox size (the SVG scales to its container).
        legend: name the series under the plot.
    """
    left, right, top = 44, 12, 24 if title else 10
    bottom = 40 if legend and len(series) > 1 else 24
    plot_w, plot_h = width - left - right, height - top - bottom
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + DAY_MS

    values = [y for s in series for _, y in s.points if y is not None]
    for s in series:
        if s.band is not None:
            values.extend(v for _, lo, hi in s.band.points for v in (lo, hi) if v is not None)
    if y_range is None:
        candidates = values + [h.y for h in hlines]
        low = min(candidates, default=0.0)
        high = max(candidates, default=1.0)
        low = min(low, 0.0) if low >= 0 else low
        pad = (high - low) * 0.08 or 0.1
        y_lo, y_hi = low, high + pad
    else:
        y_lo, y_hi = y_range
    ticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, ticks[0]), max(y_hi, ticks[-1])

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out: list[str] = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">'
    ]
    if title:
        out.append(f'<text class="ct" x="{left}" y="15">{escape(title)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>')
    for zone in zones:
        ya, yb = sy(zone.high), sy(zone.low)
        out.append(
            f'<rect x="{left}" y="{ya:.1f}" width="{plot_w}" height="{max(yb - ya, 0):.1f}" '
            f'fill="{zone.color}" fill-opacity="{zone.opacity}"/>'
        )
    for tick in ticks:
        y = sy(tick)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{left - 5}" y="{y + 3.5:.1f}" class="yt">{_fmt_tick(tick, percent)}</text>'
        )
    out.extend(_x_axis(x0, x1, sx, top + plot_h))

    if not values:
        out.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" class="empty">'
            f"{escape(empty_text)}</text>"
        )
    for s in series:
        if s.band is not None:
            out.extend(_band(s.band, sx, sy))
    for h in hlines:
        y = sy(h.y)
        dash = ' stroke-dasharray="5 3"' if h.dashed else ""
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{h.color}" stroke-width="1.2"{dash}/>'
        )
        if not h.label:
            continue
        if h.label_left:
            out.append(
                f'<text x="{left + 3}" y="{y + 10:.1f}" class="hll" fill="{h.color}">'
                f"{escape(h.label)}</text>"
            )
        else:
            out.append(
                f'<text x="{left + plot_w - 3}" y="{y - 3:.1f}" class="hl" fill="{h.color}">'
                f"{escape(h.label)}</text>"
            )
    for s in series:
        out.extend(_dots(s, sx, sy) if s.dots else _polylines(s, sx, sy))
    for marker in markers:
        if not x0 <= marker.x_ms <= x1:
            continue
        x = sx(marker.x_ms)
        if marker.line:
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" '
                f'stroke="{marker.color}" stroke-width="1" stroke-opacity="0.55" '
                'stroke-dasharray="2 2"/>'
            )
        out.append(
            f'<path d="M{x - 5:.1f},{top} L{x + 5:.1f},{top} L{x:.1f},{top + 8}Z" '
            f'fill="{marker.color}"><title>{escape(marker.label)}</title></path>'
        )
    if legend and len(series) > 1:
        out.extend(_legend(series, left, height - 10, plot_w))
    out.append("</svg>")
    return "".join(out)


def _x_axis(x0: int, x1: int, sx: object, y: float) -> list[str]:
    assert callable(sx)
    span_days = (x1 - x0) / DAY_MS
    step_days = 7 if span_days <= 70 else 14 if span_days <= 150 else 30
    first = (x0 // DAY_MS) * DAY_MS
    if first < x0:
        first += DAY_MS
    out = [f'<line x1="{sx(x0):.1f}" x2="{sx(x1):.1f}" y1="{y:.1f}" y2="{y:.1f}" class="axis"/>']
    tick = first
    while tick <= x1:
        x = sx(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y + 4:.1f}" class="axis"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 14:.1f}" class="xt">{_day_label(tick)}</text>')
        tick += step_days * DAY_MS
    return out


def _runs(points: Sequence[Point]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [run for run in runs if run]


def _polylines(s: Series, sx: object, sy: object) -> list[str]:
    assert callable(sx) and callable(sy)
    dash = ' stroke-dasharray="6 3"' if s.dashed else ""
    out = []
    for run in _runs(s.points):
        if len(run) == 1:
            x, y = run[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="1.8" fill="{s.color}"/>')
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{s.color}" '
            f'stroke-width="{s.width}" stroke-linejoin="round"{dash}/>'
        )
    return out


def _dots(s: Series, sx: object, sy: object) -> list[str]:
    assert callable(sx) and callable(sy)
    out = []
    for x, y in s.points:
        if y is None:
            continue
        if x in s.highlight:  # larger, outlined: stands out even on a red-ish series
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{ALARM}" '
                'stroke="#450a0a" stroke-width="0.9"/>'
            )
        else:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{s.color}" '
                'fill-opacity="0.7"/>'
            )
    return out


def _band(band: Band, sx: object, sy: object) -> list[str]:
    assert callable(sx) and callable(sy)
    out = []
    runs: list[list[tuple[int, float, float]]] = [[]]
    for x, lo, hi in band.points:
        if lo is None or hi is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, lo, hi))
    for run in runs:
        if len(run) < 2:
            continue
        upper = " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in run)
        lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(run))
        out.append(
            f'<polygon points="{upper} {lower}" fill="{band.color}" '
            f'fill-opacity="{band.opacity}" stroke="none"/>'
        )
    return out


def _legend(series: Sequence[Series], x: float, y: float, width: float) -> list[str]:
    out = []
    step = min(width / max(len(series), 1), 140)
    for i, s in enumerate(series):
        lx = x + i * step
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        if s.dots:
            out.append(f'<circle cx="{lx + 9:.1f}" cy="{y - 3:.1f}" r="2.5" fill="{s.color}"/>')
        else:
            out.append(
                f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{y - 3:.1f}" y2="{y - 3:.1f}" '
                f'stroke="{s.color}" stroke-width="2"{dash}/>'
            )
        out.append(f'<text x="{lx + 22:.1f}" y="{y:.1f}" class="lg">{escape(s.name)}</text>')
    return out
