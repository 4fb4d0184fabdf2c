"""What the KPI aggregator emits, and when: due windows, their values, their revisions.

``streams.core.kpi.aggregator`` (whose module docstring states the emission rules) adds
contributions to panes and moves the watermark; at each emission it asks the
``WindowEmitter`` for the *candidates*, (kpi, leaf, size, window start) of windows that
may be due:

- ``finalized_candidates``: windows with data whose end the watermark just passed;
- ``late_candidates``: final, not yet closed windows whose panes changed since;
- ``current_candidates``: the next-closing window of each size around every pane
  changed since the last current values;

and ``emit`` computes them for every series their leaf feeds, returning the rows whose
value is new (revision 1) or changed (revision + 1 of a final window).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

from schemas.records import KpiValue
from schemas.units import DAY_MS, HOUR_MS
from streams.core.kpi.catalogue import (
    KPIS,
    Dims,
    KpiKind,
    Summary,
    kpi_value,
    summarise_counts,
    summarise_durations,
)
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.drift import SeriesReferences, homogeneity_test, population_stability_index
from streams.core.kpi.panes import (
    ALLOWED,
    KINDS,
    SIZE_MS,
    PaneKey,
    PaneStore,
    kpi_index,
    size_index,
)
from streams.core.kpi.series import SeriesIndex
from streams.core.kpi.state_schema import EmitterState
from streams.core.kpi.windows import WINDOW_SPECS

__all__ = ["Cand", "Row", "WindowEmitter", "kpi_values"]

Cand = tuple[int, int, int, int]  # (kpi index, leaf or combo id, size index, window start)
Row = tuple[int, int, int, Dims, int, bool, Summary]  # size, start, kpi, dims, rev, final, value

_H, _D = HOUR_MS, DAY_MS
_SCORE = KpiKind.SCORE
_PSI = KINDS.index(KpiKind.SCORE)
_EMPTY: Summary = (0.0, 0.0, None, None, None, None, None, None)


class WindowEmitter:
    """Due windows, their values, and the revisions already emitted, for one aggregator.

    Args:
        config: the aggregator's KPI options.
        panes: the aggregator's panes (read only here).
        series: the aggregator's series.
        psi: the aggregator's PSI references; their ``changed`` set is consumed here.
        track_current: whether current values are emitted at all.

    Attributes:
        dirty: panes changed since the last current values (the aggregator adds them
            when ``track_current``).
        late_dirty: panes changed since the last emission (the aggregator adds them).
    """

    def __init__(
        self,
        config: KpiConfig,
        panes: PaneStore,
        series: SeriesIndex,
        psi: SeriesReferences,
        *,
        track_current: bool,
    ) -> None:
        self._cfg = config
        self._horizon = config.late_horizon_ms
        self._gamma = config.duration_gamma
        self._panes = panes
        self._series = series
        self._psi = psi
        self._current = track_current
        # Changed panes: still-open windows (current values) and final windows (revisions).
        self.dirty: set[PaneKey] = set()
        self.late_dirty: set[PaneKey] = set()
        # By KPI, the leaves that ever had a contribution to it (the aggregator adds
        # them); by (kpi, combo), the combo's leaves among them (cleared on a new one).
        self.data_leaves: list[set[int]] = [set() for _ in KPIS]
        self._effective: dict[tuple[int, int], tuple[int, ...]] = {}
        # Per size: window start -> (kpi, combo) -> (revision, final, summary) emitted.
        self._emitted: list[dict[int, dict[tuple[int, int], tuple[int, bool, Summary]]]] = [
            {} for _ in WINDOW_SPECS
        ]

    def state(self) -> dict[str, object]:
        """What was emitted and what changed since, as plain data (``EmitterState``)."""
        name = [spec.name for spec in KPIS]
        return {
            "dirty": [(name[k], leaf, t) for k, leaf, t in self.dirty],
            "late_dirty": [(name[k], leaf, t) for k, leaf, t in self.late_dirty],
            "data_leaves": [(name[k], sorted(leaves)) for k, leaves in enumerate(self.data_leaves)],
            "emitted": [
                (
                    WINDOW_SPECS[s].name,
                    start,
                    [(name[k], combo, *entry) for (k, combo), entry in windows.items()],
                )
                for s, emitted in enumerate(self._emitted)
                for start, windows in emitted.items()
            ],
        }

    def load(self, state: EmitterState) -> None:
        """Replaces what was emitted by stored state (the sets stay the same objects).

        Raises:
            StateError: an unknown KPI or window size.
        """
        self.dirty.clear()
        self.dirty.update((kpi_index(name), leaf, t) for name, leaf, t in state.dirty)
        self.late_dirty.clear()
        self.late_dirty.update((kpi_index(name), leaf, t) for name, leaf, t in state.late_dirty)
        for held in self.data_leaves:
            held.clear()
        for name, stored in state.data_leaves:
            self.data_leaves[kpi_index(name)].update(stored)
        self._effective.clear()
        for emitted in self._emitted:
            emitted.clear()
        for size_name, start, windows in state.emitted:
            target = self._emitted[size_index(size_name)].setdefault(start, {})
            for name, combo, revision, final, summary in windows:
                target[(kpi_index(name), combo)] = (revision, final, summary)

    def add_data_leaf(self, k: int, leaf: int) -> None:
        """Notes that ``leaf`` has (or had) contributions to KPI ``k``."""
        self.data_leaves[k].add(leaf)
        self._effective.clear()

    def emitted_windows(self) -> int:
        """Returns the number of emitted-window entries held."""
        return sum(len(v) for e in self._emitted for v in e.values())

    def prune(self, wm: int) -> None:
        """Drops the emitted-window entries of windows closed at watermark ``wm``."""
        for s, emitted in enumerate(self._emitted):
            closed = wm - SIZE_MS[s] - self._horizon
            for start in [p for p in emitted if p <= closed]:
                del emitted[start]

    # -- candidates --------------------------------------------------------------

    def finalized_candidates(self, old: int, wm: int) -> set[Cand]:
        """(kpi, leaf, size, start) of windows with data whose end is in (old, wm]."""
        cands: set[Cand] = set()
        for h, pairs in self._panes.hour_index.items():
            if old < h + _H <= wm:
                cands.update((k, leaf, 0, h) for k, leaf in pairs)
        if wm - wm % _D <= old:
            return cands  # no day boundary crossed: no 1 d, 7 d or 30 d window ended
        day_index = self._panes.day_index
        for s in range(1, len(WINDOW_SPECS)):
            size = SIZE_MS[s]
            starts = {
                start
                for d in day_index
                for start in range(d - size + _D, d + 1, _D)
                if old < start + size <= wm
            }
            for start in starts:
                for day in range(start, start + size, _D):
                    for k, leaf in day_index.get(day, ()):
                        cands.add((k, leaf, s, start))
        return cands

    def late_candidates(self, wm: int) -> set[Cand]:
        """Final, not yet closed windows containing panes changed after they were final."""
        cands: set[Cand] = set()
        horizon = self._horizon
        for k, leaf, h in self.late_dirty:
            if h + _H <= wm < h + _H + horizon:
                cands.add((k, leaf, 0, h))
            d = h - h % _D
            for s in range(1, len(WINDOW_SPECS)):
                size = SIZE_MS[s]
                for start in range(d - size + _D, d + 1, _D):
                    if start + size <= wm < start + size + horizon:
                        cands.add((k, leaf, s, start))
        self.late_dirty.clear()
        cands.update(self._psi_candidates(wm, final=True))
        return cands

    def current_candidates(self, wm: int) -> set[Cand]:
        """The next-closing window of each size around every pane changed since last time."""
        cands: set[Cand] = set()
        days: set[tuple[int, int, int]] = set()
        for k, leaf, h in self.dirty:
            if h + _H > wm:
                cands.add((k, leaf, 0, h))
            days.add((k, leaf, h - h % _D))
        self.dirty.clear()
        for k, leaf, d in days:
            for s in range(1, len(WINDOW_SPECS)):
                size = SIZE_MS[s]
                x = wm - size
                start = max(d - size + _D, x - x % _D + _D)
                if start <= d:
                    cands.add((k, leaf, s, start))
        cands.update(self._psi_candidates(wm, final=False))
        return cands

    def _psi_candidates(self, wm: int, *, final: bool) -> set[Cand]:
        """PSI windows of series whose reference changed: open windows after the reference."""
        changed = self._psi.changed
        if not changed:
            return set()
        cands: set[Cand] = set()
        horizon = self._horizon
        firsts = [self._psi.first_day(c) for c in changed]
        after = min(f for f in firsts if f is not None) + self._psi.reference_ms
        leaves = {leaf for combo in changed for leaf in self._series.combo_leaves[combo]}
        for d, pairs in self._panes.day_index.items():
            if d < after:
                continue  # every window containing d starts before any changed reference ends
            for k, leaf in pairs:
                if k != _PSI or leaf not in leaves:
                    continue
                for s in range(1, len(WINDOW_SPECS)):
                    size = SIZE_MS[s]
                    for start in range(max(d - size + _D, after), d + 1, _D):
                        end = start + size
                        if (end <= wm < end + horizon) if final else end > wm:
                            cands.add((k, leaf, s, start))
        if not final or not self._current:
            changed.clear()
        return cands

    # -- values --------------------------------------------------------------------

    def emit(self, cands: Iterable[Cand], wm: int) -> list[Row]:
        """Computes candidate windows for every series their leaf belongs to.

        A window is emitted when it became final, when its final value changed
        (``revision + 1``), or when its current value changed.
        """
        keys: set[Cand] = set()
        leaf_combos = self._series.leaf_combos
        for k, leaf, s, start in cands:
            if ALLOWED[k][s]:
                combos = leaf_combos[leaf][0 if KPIS[k].versioned else 1]
                keys.update((k, combo, s, start) for combo in combos)
        rows: list[Row] = []
        # Series whose leaves with data are the same have the same value: (site, model,
        # version) and (site, model, *) while a model runs one version, say. Computed
        # once per call. Not for score drift, whose reference belongs to each series.
        effective = self._effective
        combo_leaves = self._series.combo_leaves
        data_leaves = self.data_leaves
        same: dict[tuple[tuple[int, ...], int, int, int], Summary | None] = {}
        # Sorted so that consecutive final windows of a series slide (PaneStore.aggregate).
        for k, combo, s, start in sorted(keys):
            final = start + SIZE_MS[s] <= wm
            if k == _PSI:
                summary = self._summary(k, combo, s, start, final)
            else:
                leaves = effective.get((k, combo))
                if leaves is None:
                    data = data_leaves[k]
                    leaves = tuple(leaf for leaf in combo_leaves[combo] if leaf in data)
                    effective[(k, combo)] = leaves
                key = (leaves, k, s, start)
                if key in same:
                    summary = same[key]
                else:
                    summary = same[key] = self._summary(k, combo, s, start, final)
            emitted = self._emitted[s].setdefault(start, {})
            before = emitted.get((k, combo))
            if before is None:
                if summary is None:
                    continue
                revision = 1
            elif before[1]:
                if before[2] == (summary or _EMPTY):
                    continue
                revision = before[0] + 1
            elif not final and before[2] == (summary or _EMPTY):
                continue
            else:
                revision = 1
            summary = summary or _EMPTY
            emitted[(k, combo)] = (revision, final, summary)
            rows.append((s, start, k, self._series.combo_dims[combo], revision, final, summary))
        return rows

    def _summary(self, k: int, combo: int, s: int, start: int, final: bool) -> Summary | None:
        """Returns the value of a window for a series; None when it has no data."""
        spec = KPIS[k]
        leaves = self._series.combo_leaves[combo]
        if spec.kind is _SCORE:
            reference = self._psi.reference(combo, leaves)
            if reference is None or start < reference[0]:
                return None  # windows overlapping the reference period get no PSI
            bins = self._panes.aggregate(k, combo, leaves, s, start, final)
            assert isinstance(bins, list)
            psi = population_stability_index(bins, reference[1], self._cfg.psi_epsilon)
            if psi is None:
                return None
            test = homogeneity_test(bins, reference[1])
            p_value = None if test is None else test.p_value
            return (None, float(sum(bins)), psi, None, None, None, None, p_value)
        agg = self._panes.aggregate(k, combo, leaves, s, start, final)
        if isinstance(agg, dict):
            return summarise_durations(agg, self._gamma)
        return summarise_counts(spec, agg[0], agg[1])


def kpi_values(rows: list[Row]) -> list[KpiValue]:
    """Returns the KPI values of emitted rows in a deterministic order.

    Sorted by window size, window start, KPI catalogue order, then dimensions.
    """
    rows.sort(key=_ORDER)  # never compares values (None vs float)
    return [
        kpi_value(k, s, start, dims, rev, final, v) for s, start, k, dims, rev, final, v in rows
    ]


_ORDER = itemgetter(0, 1, 2, 3, 4, 5)
