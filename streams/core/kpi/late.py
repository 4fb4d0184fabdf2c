"""Dead letters for KPI contributions that reached closed windows (DESIGN §5).

A window is closed ``late_horizon_ms`` after its end. A contribution reaching it changes
nothing, and ``streams.core.kpi.aggregator`` turns the lineage revision that carried it
into one LATE_AFTER_WINDOW_CLOSED dead letter naming the windows it missed, so late
data is an output with a reason, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from schemas.records import DeadLetter, DeadLetterReason, LineageRecord
from schemas.units import HOUR_MS
from streams.core.kpi.catalogue import KPIS
from streams.core.kpi.panes import ALLOWED

__all__ = ["late_dead_letter"]


def late_dead_letter(
    record: LineageRecord,
    missed: Iterable[tuple[int, int, int]],
    horizon_ms: int,
    watermark_ms: int,
) -> DeadLetter:
    """Returns the dead letter of a lineage revision that reached closed KPI windows.

    Called by the aggregator after applying or retracting the revision.

    Args:
        record: the revision; it becomes the dead letter's value (JSON).
        missed: (kpi index, size index, pane start) of the closed windows it reached:
            size 0 for a 1 h window, 1 for the 1 d / 7 d / 30 d windows of a day.
        horizon_ms: the late horizon, after which windows are closed.
        watermark_ms: the KPI watermark.
    """
    parts = []
    for k, s, start in sorted(set(missed)):
        if s == 0:
            parts.append(f"{KPIS[k].name} 1h window at {_iso(start)}")
        else:
            sizes = "/".join(n for i, n in ((1, "1d"), (2, "7d"), (3, "30d")) if ALLOWED[k][i])
            day = _iso(start)[:10]
            parts.append(f"{KPIS[k].name}: the closed ones of its {sizes} windows with {day}")
    key = [record.site_id, record.study_uid, record.algorithm_name, record.finding_code]
    return DeadLetter(
        reason=DeadLetterReason.LATE_AFTER_WINDOW_CLOSED,
        message=(
            f"lineage row {key} revision {record.revision} reached KPI windows "
            f"closed {horizon_ms // HOUR_MS} h after their end (KPI watermark "
            f"{_iso(watermark_ms)}); left out of: {'; '.join(parts)}"
        ),
        value=record.model_dump_json().encode(),
        study_uid=record.study_uid,
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
