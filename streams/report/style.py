"""The report's look: its inline CSS and the colours of sites and AI results.

Everything is inline (no web font, no stylesheet link) so the file renders offline and
prints; the chart classes (``svg .ct``, ``.xt``, ...) are the ones :mod:`.svg` writes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CSS", "NEGATIVE_COLOUR", "POSITIVE_COLOUR", "SITE_COLOURS", "site_colour"]

SITE_COLOURS = ("#2563eb", "#ea580c", "#0d9488", "#9333ea", "#ca8a04", "#db2777", "#4b5563")
POSITIVE_COLOUR, NEGATIVE_COLOUR = "#dc2626", "#2563eb"


def site_colour(sites: Sequence[str], site: str) -> str:
    """Returns the colour of ``site``: the same in every chart and legend of the report."""
    return SITE_COLOURS[sites.index(site) % len(SITE_COLOURS)] if site in sites else "#4b5563"


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
"""The page's stylesheet, inlined in ``<style>``."""
