"""The panes of the KPI aggregator, and the windows merged from them (DESIGN §5).

A *pane* is one aggregate per (KPI, leaf series, hour) or (KPI, leaf series, UTC day):
``[num, den]`` of a proportion or count, the score bins of a day, or duration bucket ->
count. ``streams.core.kpi.aggregator`` (whose module docstring gives the whole model)
decides which pane a contribution goes to and when a day is final; this module holds
the panes, adds and retracts contributions (refusing any that would drive a count
negative), builds final days from their hours, drops the panes of closed windows, and
merges the panes of a window, sliding consecutive final 7 d / 30 d windows.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.units import DAY_MS, HOUR_MS
from streams.core.kpi.catalogue import KPIS, KpiKind
from streams.core.kpi.drift import PSI_BINS
from streams.core.kpi.state_schema import PaneStoreState
from streams.core.kpi.stats import Counts, add_counts, merge_counts, subtract_counts
from streams.core.kpi.windows import WINDOW_SPECS

__all__ = [
    "ALLOWED",
    "KINDS",
    "KPI_INDEX",
    "MIN_MS",
    "SIZE_INDEX",
    "SIZE_MS",
    "Pane",
    "PaneKey",
    "PaneStore",
    "StateError",
    "kpi_index",
    "size_index",
]

PaneKey = tuple[int, int, int]  # (kpi index, leaf id, pane start ms)
Pane = Counts  # [num, den], score bins, or duration bucket -> count

_H, _D = HOUR_MS, DAY_MS
MIN_MS = -(1 << 62)
"""Earlier than any event time: a watermark or mark that has not moved yet."""
_DURATION, _SCORE = KpiKind.DURATION, KpiKind.SCORE
KINDS = tuple(spec.kind for spec in KPIS)
"""The kind of each KPI, by catalogue index."""


def _empty_of(kind: KpiKind) -> Callable[[], Counts]:
    if kind is KpiKind.DURATION:
        return dict
    size = PSI_BINS if kind is KpiKind.SCORE else 2
    return lambda: [0] * size


_EMPTY_OF = tuple(_empty_of(kind) for kind in KINDS)
ALLOWED = tuple(tuple(size.name in spec.window_sizes for size in WINDOW_SPECS) for spec in KPIS)
"""``ALLOWED[k][s]``: whether KPI ``k`` has windows of size ``WINDOW_SPECS[s]``."""
SIZE_MS = tuple(size.size_ms for size in WINDOW_SPECS)
"""The length of each window size, by ``WINDOW_SPECS`` index."""
KPI_INDEX = {spec.name: k for k, spec in enumerate(KPIS)}
"""A KPI's index in the catalogue, by name (stored state names KPIs, never indexes them)."""
SIZE_INDEX = {size.name: s for s, size in enumerate(WINDOW_SPECS)}
"""A window size's index in ``WINDOW_SPECS``, by name."""


class StateError(ValueError):
    """Stored KPI state that does not fit this release: an unknown KPI, a pane of a wrong shape."""


def kpi_index(name: str) -> int:
    """The catalogue index of a KPI named by stored state.

    Raises:
        StateError: no KPI of that name.
    """
    k = KPI_INDEX.get(name)
    if k is None:
        raise StateError(f"the stored state names KPI {name!r}, which this release does not know")
    return k


def size_index(name: str) -> int:
    """The ``WINDOW_SPECS`` index of a window size named by stored state.

    Raises:
        StateError: no window size of that name.
    """
    s = SIZE_INDEX.get(name)
    if s is None:
        raise StateError(f"the stored state names window size {name!r}, which does not exist")
    return s


def _pane_length(k: int) -> int:
    return PSI_BINS if KINDS[k] is _SCORE else 2


class PaneStore:
    """Every pane of every (KPI, leaf series), and the latest final rolling windows.

    Attributes:
        hour_lists: hour panes of proportions and counts, ``[num, den]``.
        day_lists: day panes of proportions and counts, and of scores (bins).
        hour_buckets: hour panes of durations, bucket -> count.
        day_buckets: day panes of durations, bucket -> count.
        hour_index: hour start -> (kpi, leaf) pairs with an hour pane there.
        day_index: day start -> (kpi, leaf) pairs with a day pane there.
        compacted_to: day panes of proportions and durations exist for the days before
            it (built by ``compact``); later days are merged from their hours.
        refused: retractions refused because they would have made a count negative.

    The dicts are never rebound: the aggregator's hot path holds them directly.
    """

    def __init__(self) -> None:
        # Panes: [num, den] or score bins in lists; durations as bucket -> count.
        self.hour_lists: dict[PaneKey, list[int]] = {}
        self.day_lists: dict[PaneKey, list[int]] = {}
        self.hour_buckets: dict[PaneKey, dict[int, int]] = {}
        self.day_buckets: dict[PaneKey, dict[int, int]] = {}
        self.hour_index: dict[int, set[tuple[int, int]]] = {}
        self.day_index: dict[int, set[tuple[int, int]]] = {}
        # Day panes of proportions and durations are built from hour panes when the day
        # is final ("compacted"): one pane update per contribution on the hot path.
        self.compacted_to = MIN_MS
        # (kpi, combo, size) -> (start, aggregate) of the latest final rolling window.
        self._slides: dict[tuple[int, int, int], tuple[int, Pane]] = {}
        self.refused = 0

    def state(self) -> dict[str, object]:
        """The panes as plain data, in the shape of ``PaneStoreState``."""
        name = [spec.name for spec in KPIS]
        size = [spec.name for spec in WINDOW_SPECS]
        return {
            "hour_lists": [
                (name[k], leaf, t, pane) for (k, leaf, t), pane in self.hour_lists.items()
            ],
            "day_lists": [
                (name[k], leaf, t, pane) for (k, leaf, t), pane in self.day_lists.items()
            ],
            "hour_buckets": [
                (name[k], leaf, t, list(pane.items()))
                for (k, leaf, t), pane in self.hour_buckets.items()
            ],
            "day_buckets": [
                (name[k], leaf, t, list(pane.items()))
                for (k, leaf, t), pane in self.day_buckets.items()
            ],
            "hour_index": [
                (t, [(name[k], leaf) for k, leaf in pairs]) for t, pairs in self.hour_index.items()
            ],
            "day_index": [
                (t, [(name[k], leaf) for k, leaf in pairs]) for t, pairs in self.day_index.items()
            ],
            "compacted_to": self.compacted_to,
            "slide_lists": [
                (name[k], combo, size[s], start, agg)
                for (k, combo, s), (start, agg) in self._slides.items()
                if isinstance(agg, list)
            ],
            "slide_buckets": [
                (name[k], combo, size[s], start, list(agg.items()))
                for (k, combo, s), (start, agg) in self._slides.items()
                if isinstance(agg, dict)
            ],
            "refused": self.refused,
        }

    def load(self, state: PaneStoreState) -> None:
        """Replaces the panes by stored ones (the dicts stay the same objects).

        Raises:
            StateError: a pane of an unknown KPI, of a kind stored in the wrong shape, or
                of the wrong length.
        """
        for target, panes in (
            (self.hour_lists, state.hour_lists),
            (self.day_lists, state.day_lists),
        ):
            target.clear()
            for name, leaf, start, counts in panes:
                k = kpi_index(name)
                if KINDS[k] is _DURATION or len(counts) != _pane_length(k):
                    raise StateError(f"a pane of {name} holds {len(counts)} counts")
                target[(k, leaf, start)] = list(counts)
        for btarget, bpanes in (
            (self.hour_buckets, state.hour_buckets),
            (self.day_buckets, state.day_buckets),
        ):
            btarget.clear()
            for name, leaf, start, pairs in bpanes:
                k = kpi_index(name)
                if KINDS[k] is not _DURATION:
                    raise StateError(f"a pane of {name} holds duration buckets")
                btarget[(k, leaf, start)] = dict(pairs)
        for itarget, index in (
            (self.hour_index, state.hour_index),
            (self.day_index, state.day_index),
        ):
            itarget.clear()
            for start, named in index:
                itarget[start] = {(kpi_index(name), leaf) for name, leaf in named}
        self.compacted_to = state.compacted_to
        self._slides = {}
        for name, combo, size_name, start, agg in state.slide_lists:
            self._slides[(kpi_index(name), combo, size_index(size_name))] = (start, list(agg))
        for name, combo, size_name, start, pairs in state.slide_buckets:
            self._slides[(kpi_index(name), combo, size_index(size_name))] = (start, dict(pairs))
        self.refused = state.refused

    def list_pane(
        self,
        panes: dict[PaneKey, list[int]],
        index: dict[int, set[tuple[int, int]]],
        key: PaneKey,
        x: int,
        y: int,
        sign: int,
    ) -> bool:
        """Adds or retracts a proportion's ``x`` / ``y``; False if refused."""
        pane = panes.get(key)
        if sign > 0:
            if pane is None:
                pane = panes[key] = [0, 0]
                index.setdefault(key[2], set()).add((key[0], key[1]))
            pane[0] += x
            pane[1] += y
            return True
        # Never below zero, and never more successes than trials (a retraction of
        # something never added can otherwise pass for a real one).
        if pane is None or pane[0] < x or pane[1] < y or pane[1] - y < pane[0] - x:
            self.refused += 1
            return False
        pane[0] -= x
        pane[1] -= y
        return True

    def score_pane(self, key: PaneKey, bin_index: int, sign: int) -> bool:
        """Adds or retracts one score in a day pane; False if refused."""
        pane = self.day_lists.get(key)
        if sign > 0:
            if pane is None:
                pane = self.day_lists[key] = [0] * PSI_BINS
                self.day_index.setdefault(key[2], set()).add((key[0], key[1]))
            pane[bin_index] += 1
            return True
        if pane is None or pane[bin_index] < 1:
            self.refused += 1
            return False
        pane[bin_index] -= 1
        return True

    def bucket_pane(
        self,
        panes: dict[PaneKey, dict[int, int]],
        index: dict[int, set[tuple[int, int]]],
        key: PaneKey,
        bucket: int,
        sign: int,
    ) -> bool:
        """Adds or retracts one duration sample; False if refused."""
        pane = panes.get(key)
        if sign > 0:
            if pane is None:
                pane = panes[key] = {}
                index.setdefault(key[2], set()).add((key[0], key[1]))
            pane[bucket] = pane.get(bucket, 0) + 1
            return True
        have = 0 if pane is None else pane.get(bucket, 0)
        if pane is None or have < 1:
            self.refused += 1
            return False
        if have == 1:
            del pane[bucket]
        else:
            pane[bucket] = have - 1
        return True

    def drop_slides(self, k: int, combos: tuple[int, ...], day: int) -> None:
        """Forgets the slides covering a day pane that changed after it was final."""
        for combo in combos:
            for s in (2, 3):
                slide = self._slides.get((k, combo, s))
                if slide is not None and slide[0] <= day < slide[0] + SIZE_MS[s]:
                    del self._slides[(k, combo, s)]

    def compact(self, upto: int) -> None:
        """Builds the day panes of days before ``upto`` (final days) from their hours."""
        if upto <= self.compacted_to:
            return
        low = self.compacted_to
        self.compacted_to = upto
        for h in sorted(self.hour_index):
            if not low <= h < upto:
                continue
            d = h - h % _D
            for k, leaf in self.hour_index[h]:
                key, day_key = (k, leaf, h), (k, leaf, d)
                if KINDS[k] is _DURATION:
                    buckets = self.hour_buckets.get(key)
                    if buckets is not None:
                        day_buckets = self.day_buckets.setdefault(day_key, {})
                        add_counts(day_buckets, (buckets,))
                else:
                    pane = self.hour_lists.get(key)
                    if pane is not None:
                        day_pane = self.day_lists.setdefault(day_key, [0, 0])
                        day_pane[0] += pane[0]
                        day_pane[1] += pane[1]
                self.day_index.setdefault(d, set()).add((k, leaf))

    def prune(self, open_hour: int, open_day: int) -> None:
        """Drops the panes of closed windows.

        Args:
            open_hour: the first hour whose 1 h window is not closed (hour panes of
                days not compacted yet are kept as well).
            open_day: the first day some window still needs.
        """
        for index, open_from, lists, buckets in (
            (
                self.hour_index,
                min(open_hour, self.compacted_to),
                self.hour_lists,
                self.hour_buckets,
            ),
            (self.day_index, open_day, self.day_lists, self.day_buckets),
        ):
            for start in [p for p in index if p < open_from]:
                for k, leaf in index.pop(start):
                    lists.pop((k, leaf, start), None)
                    buckets.pop((k, leaf, start), None)

    def aggregate(
        self, k: int, combo: int, leaves: list[int], s: int, start: int, final: bool
    ) -> Pane:
        """Merges the panes of a window over the leaves of a series.

        Final rolling windows *slide*: the window starting a day later is the previous
        one minus its first day plus the new last day. That is exact because a final
        window's panes only change through late contributions, which drop the slide.
        """
        kind = KINDS[k]
        panes: dict[PaneKey, list[int]] | dict[PaneKey, dict[int, int]]
        if s == 0:
            panes = self.hour_buckets if kind is _DURATION else self.hour_lists
            return merge_counts([panes.get((k, leaf, start)) for leaf in leaves], _EMPTY_OF[k])
        panes = self.day_buckets if kind is _DURATION else self.day_lists
        size = SIZE_MS[s]
        if s < 2 or not final:
            parts: list[Pane | None] = []
            for d in range(start, start + size, _D):
                if d < self.compacted_to or kind is _SCORE:
                    parts.extend(panes.get((k, leaf, d)) for leaf in leaves)
                else:  # an open day: merge its hours
                    hours = self.hour_buckets if kind is _DURATION else self.hour_lists
                    parts.extend(
                        hours.get((k, leaf, h)) for leaf in leaves for h in range(d, d + _D, _H)
                    )
            return merge_counts(parts, _EMPTY_OF[k])
        key = (k, combo, s)
        slide = self._slides.get(key)
        if slide is not None and slide[0] == start:
            return slide[1]
        if slide is not None and slide[0] == start - _D:
            agg = slide[1]
            subtract_counts(agg, [panes.get((k, leaf, start - _D)) for leaf in leaves])
            add_counts(agg, [panes.get((k, leaf, start + size - _D)) for leaf in leaves])
        else:
            days = range(start, start + size, _D)
            parts = [panes.get((k, leaf, d)) for leaf in leaves for d in days]
            agg = merge_counts(parts, _EMPTY_OF[k], owned=True)
            if slide is not None and slide[0] > start:
                return agg  # a revision of an older window: keep the newer slide
        self._slides[key] = (start, agg)
        return agg
