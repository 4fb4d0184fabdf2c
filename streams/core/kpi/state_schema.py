"""The schema of a KPI partition's state, as its snapshots store it (format 1).

The KPI stage checkpoints each partition's aggregator, breach evaluator, upstream
watermarks, applied offsets and recently written rows (``streams.core.kpi.snapshot``
encodes them). These models are that format's schema: every snapshot is validated
against them before any of it is loaded, so a corrupt or foreign snapshot is refused
with the path of the first bad field, never half-applied.

What the format depends on, and what it does not:

- KPIs and window sizes are written by *name* (``"alert_ppv"``, ``"30d"``), never by
  their index in the catalogue, so a KPI added to the catalogue does not shift a stored
  pane onto another KPI;
- series are the leaf dimensions ``(site, algorithm, version, finding)`` in the order
  they were first seen (their ids are that order);
- nothing of the configuration or the breach policy is stored: a restored partition is
  built from the current settings, then filled (a KPI configuration that shapes the
  state differently is refused by the snapshot's ``kpi_config`` check; a breach rule no
  longer in the policy loses its series);
- caches (PSI references merged per series, effective leaves per series) are not
  stored: they are rebuilt on first use.

The format is versioned as a whole (``KpiSnapshot.format``); a change of any model here
is a new format, with the previous one kept readable and a fixture of it in
``tests/data/kpi_snapshots``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "AggregatorState",
    "BreachEvaluatorState",
    "BreachSeriesState",
    "EmitterState",
    "KpiSnapshot",
    "PaneStoreState",
    "ReferenceState",
    "WatermarkState",
    "WindowState",
]

SNAPSHOT_FORMAT = 1
"""The format these models describe."""

Dims = tuple[str, str, str, str]
ListPane = tuple[str, int, int, list[int]]
"""(KPI name, leaf id, pane start ms, counts): ``[num, den]`` or score bins."""
BucketPane = tuple[str, int, int, list[tuple[int, int]]]
"""(KPI name, leaf id, pane start ms, [(bucket, count), ...]) of a duration."""
PaneIndex = tuple[int, list[tuple[str, int]]]
"""(pane start ms, [(KPI name, leaf id), ...]) of the panes starting there."""
# The same shape as ``catalogue.Summary``, spelt out on purpose: the stored format must
# not change when the code's type does (that is a new format, see the module docstring).
Summary = tuple[
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
]
WindowState = tuple[int, int, float, float | None, float | None, float | None]
"""A window a breach rule saw: (start ms, end ms, value, numerator, denominator, p)."""


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PaneStoreState(_State):
    hour_lists: list[ListPane]
    day_lists: list[ListPane]
    hour_buckets: list[BucketPane]
    day_buckets: list[BucketPane]
    hour_index: list[PaneIndex]
    day_index: list[PaneIndex]
    compacted_to: int
    slide_lists: list[tuple[str, int, str, int, list[int]]]
    """(KPI, combo id, window size, window start ms, counts) of the latest final rolling window."""
    slide_buckets: list[tuple[str, int, str, int, list[tuple[int, int]]]]
    refused: int


class ReferenceState(_State):
    """PSI references: per leaf, its first score day and the day histograms of its reference."""

    reference_ms: int
    leaf_first: list[tuple[int, int]]
    leaf_days: list[tuple[int, list[tuple[int, list[int]]]]]
    leaf_ends: list[tuple[int, int]]
    series_first: list[tuple[int, int]]
    changed: list[int]


class EmitterState(_State):
    dirty: list[tuple[str, int, int]]
    """(KPI, leaf, pane start) changed since the last current values."""
    late_dirty: list[tuple[str, int, int]]
    """(KPI, leaf, pane start) changed since the last emission."""
    data_leaves: list[tuple[str, list[int]]]
    emitted: list[tuple[str, int, list[tuple[str, int, int, bool, Summary]]]]
    """(window size, start ms, [(KPI, combo id, revision, final, value summary), ...])."""


class AggregatorState(_State):
    leaves: list[Dims]
    max_event_ms: int | None
    last_emit_ms: int | None
    watermark_ms: int
    next_boundary_ms: int
    live_hour_ms: int
    open_hour_ms: int
    open_day_ms: int
    too_late: dict[str, int]
    panes: PaneStoreState
    references: ReferenceState
    emitter: EmitterState


class BreachSeriesState(_State):
    rule: str
    dims: Dims
    """(site, algorithm, version, finding) of the series the rule watches."""
    recent: list[WindowState]
    last_start_ms: int | None
    breaching: int
    healthy: int
    open_id: str | None
    baseline_start_ms: int | None
    baseline: tuple[float, float]
    bound: float | None
    chart: tuple[float, float, float] | None
    """The CUSUM chart (p0, p1, h), once designed."""
    statistic: float
    path: list[WindowState]


class BreachEvaluatorState(_State):
    ignored_values: int
    series: list[BreachSeriesState]


class WatermarkState(_State):
    allowed_lateness_ms: int
    sources: list[tuple[int, int | None]]
    """Each upstream partition and the greatest event time it reported (None: none yet)."""
    idle: list[int]
    watermark_ms: int | None


class KpiSnapshot(_State):
    """One contributions partition's state at a checkpoint."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    format: Literal[1]
    kpi_config: dict[str, object]
    """The KPI settings the state was built with (``KpiConfig``, JSON)."""
    aggregator: AggregatorState
    breaches: BreachEvaluatorState | None
    upstream: WatermarkState
    applied: list[tuple[int, int]]
    """Offset ranges ``[start, end)`` of the contributions applied."""
    rows: list[tuple[str, bytes]]
    """Lineage rows written since the previous snapshot: (lineage key, encoded record)."""
