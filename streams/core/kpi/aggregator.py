"""Event-time KPI windows over lineage revisions (DESIGN §5).

``KpiAggregator`` is called by the replay driver and the Faust agent:

- ``apply(old, new)`` for every lineage revision (``old`` None for revision 1): the
  old revision's contribution is subtracted and the new one's added;
- ``advance(watermark_ms)`` whenever the caller's watermark moves: windows ending at
  or before it become final. The aggregator never derives the watermark from the
  records it happens to receive: the driver owns it (one per input source, combined
  by their minimum, ``streams.core.watermarks``), because records of several sources
  never arrive in one event-time order;
- ``close_all()`` at the end of input: every window becomes final.

Each returns the ``KpiValue`` records to publish, in a deterministic order; the late
contributions of the calls since the last one are collected by ``take_late``.

State is a set of *panes*: one aggregate per (KPI, leaf series, hour) and per (KPI,
leaf series, UTC day), where a leaf series is (site, algorithm, version, finding). A
contribution updates one hour pane, whatever the window lengths (scores, which have no
hourly windows, one day pane); a day's pane is built from its hours once the day is
final. The 1 h window *is* its hour pane; 1 d / 7 d / 30 d windows and the roll-ups
(site ``*``, version ``*``: every leaf updates 4 series) are merged from panes when
they are emitted, and consecutive final 7 d / 30 d windows *slide* (previous window -
its first day + the new day), so a window costs two pane merges whatever its length.
State therefore grows with panes x series, never with the number of records.

Emission rules:

- a window is *final* once the watermark reaches its end; final values are emitted
  once, with ``revision`` 1, when the watermark passes the end (if the window has data);
- a contribution landing in a final window re-emits it with ``revision + 1`` at the
  next emission; a window emptied by retraction is re-emitted with denominator 0 and
  no value, so downstream never keeps a stale value;
- ``late_horizon_ms`` after its end a window is *closed*: contributions to it are
  counted in ``too_late`` (per window size), change nothing, and come back from
  ``take_late`` as LATE_AFTER_WINDOW_CLOSED dead letters naming the windows they
  missed (never a silent drop); its panes are dropped;
- current (non-final) values are emitted at most every ``emit_interval_ms`` of event
  time (or, with ``current_on_demand``, only by ``emit_current``, which the caller
  paces: processing time in the live worker), only for windows that changed, and for
  rolling windows only the one closing next (the trailing 7 or 30 days); other windows
  get their value when final;
- retraction never drives a count negative (nor a numerator above its denominator): a
  retraction of something that was never added is refused and counted in
  ``refused_retractions``.

Revisions of one lineage key must arrive in order (the joiner emits them so); keys
may interleave in any order. For any such interleaving, the last value of every window
equals the batch recomputation, as long as no contribution was ``too_late``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from schemas.records import DeadLetter, DeadLetterReason, KpiValue, LineageRecord
from streams.core.kpi.catalogue import (
    KPIS,
    NO_VERSION,
    ContributionBuilder,
    Dims,
    Item,
    KpiKind,
    Summary,
    kpi_value,
    summarise_counts,
    summarise_durations,
)
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.drift import PSI_BINS, SeriesReferences, population_stability_index
from streams.core.kpi.stats import Counts, add_counts, merge_counts, subtract_counts
from streams.core.kpi.windows import DAY_MS, HOUR_MS, WINDOW_SPECS

__all__ = ["KpiAggregator"]


_PaneKey = tuple[int, int, int]  # (kpi index, leaf id, pane start ms)
_Cand = tuple[int, int, int, int]  # (kpi index, leaf or combo id, size index, window start)
_Pane = Counts  # [num, den], score bins, or duration bucket -> count
_Row = tuple[int, int, int, Dims, int, bool, Summary]  # size, start, kpi, dims, rev, final, value

_H, _D = HOUR_MS, DAY_MS
_MIN_MS = -(1 << 62)
_MAX_MS = 1 << 62
_DURATION, _SCORE = KpiKind.DURATION, KpiKind.SCORE
_KINDS = tuple(spec.kind for spec in KPIS)
_PSI = _KINDS.index(KpiKind.SCORE)


def _empty_of(kind: KpiKind) -> Callable[[], Counts]:
    if kind is KpiKind.DURATION:
        return dict
    size = PSI_BINS if kind is KpiKind.SCORE else 2
    return lambda: [0] * size


_EMPTY_OF = tuple(_empty_of(kind) for kind in _KINDS)
_ALLOWED = tuple(tuple(size.name in spec.window_sizes for size in WINDOW_SPECS) for spec in KPIS)
_SIZE_MS = tuple(size.size_ms for size in WINDOW_SPECS)
_EMPTY: Summary = (0.0, 0.0, None, None, None, None, None)


def _floor(ms: int, unit: int) -> int:
    return ms - ms % unit


class KpiAggregator:
    """Windowed KPI state for all series; see the module docstring for the contract.

    Args:
        config: KPI options; defaults documented in ``streams.core.kpi.config``.
        current_on_demand: current values are emitted only by ``emit_current``
            (``emit_interval_ms`` is ignored); final values stay driven by event time.
    """

    def __init__(self, config: KpiConfig | None = None, *, current_on_demand: bool = False) -> None:
        self._cfg = cfg = config or KpiConfig()
        self._contribution = ContributionBuilder(cfg)
        self._horizon = cfg.late_horizon_ms
        self._interval = None if current_on_demand else cfg.emit_interval_ms
        # Whether changed open windows are tracked (for current values) at all.
        self._current = current_on_demand or cfg.emit_interval_ms is not None
        self._gamma = cfg.duration_gamma
        # Series: leaves are what records carry, combos what values are emitted for.
        self._leaf_ids: dict[Dims, int] = {}
        self._leaf_combos: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._combo_ids: dict[Dims, int] = {}
        self._combo_dims: list[Dims] = []
        self._combo_leaves: list[list[int]] = []
        # Panes: [num, den] or score bins in lists; durations as bucket -> count.
        self._hour_lists: dict[_PaneKey, list[int]] = {}
        self._day_lists: dict[_PaneKey, list[int]] = {}
        self._hour_buckets: dict[_PaneKey, dict[int, int]] = {}
        self._day_buckets: dict[_PaneKey, dict[int, int]] = {}
        self._hour_index: dict[int, set[tuple[int, int]]] = {}
        self._day_index: dict[int, set[tuple[int, int]]] = {}
        # Changed panes: still-open windows (current values) and final windows (revisions).
        self._dirty: set[_PaneKey] = set()
        self._late_dirty: set[_PaneKey] = set()
        # Per size: window start -> (kpi, combo) -> (revision, final, summary) emitted.
        self._emitted: list[dict[int, dict[tuple[int, int], tuple[int, bool, Summary]]]] = [
            {} for _ in WINDOW_SPECS
        ]
        self._psi = SeriesReferences(cfg.psi_reference_ms)
        # (kpi, combo, size) -> (start, aggregate) of the latest final rolling window.
        self._slides: dict[tuple[int, int, int], tuple[int, _Pane]] = {}
        self._max_event_ms: int | None = None
        self._last_emit_ms: int | None = None
        self._wm = _MIN_MS
        self._next_boundary = _MIN_MS
        self._live_hour = self._open_hour = self._open_day = _MIN_MS
        # Day panes of proportions and durations are built from hour panes when the day
        # is final ("compacted"): one pane update per contribution on the hot path.
        self._compacted_to = _MIN_MS
        self._too_late = {size.name: 0 for size in WINDOW_SPECS}
        self._refused = 0
        # Closed windows missed by the record being applied: (kpi, size, pane start).
        self._missed: list[tuple[int, int, int]] = []
        self._late: list[DeadLetter] = []

    # -- observability -------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        """The KPI watermark, None before the first ``advance``."""
        return None if self._wm == _MIN_MS else self._wm

    @property
    def too_late(self) -> dict[str, int]:
        """Contributions that reached a closed window, by window size (never dropped silently)."""
        return dict(self._too_late)

    @property
    def refused_retractions(self) -> int:
        """Retractions refused because they would have made a count negative."""
        return self._refused

    def state_size(self) -> dict[str, int]:
        """Returns the number of panes, emitted-window entries and series held."""
        return {
            "hour_panes": len(self._hour_lists) + len(self._hour_buckets),
            "day_panes": len(self._day_lists) + len(self._day_buckets),
            "emitted_windows": sum(len(v) for e in self._emitted for v in e.values()),
            "series": len(self._combo_dims),
        }

    # -- input -------------------------------------------------------------------

    def apply(self, old: LineageRecord | None, new: LineageRecord) -> list[KpiValue]:
        """Replaces the contribution of ``old`` by that of ``new``; called per revision.

        Returns:
            KPI values due now: windows the watermark made final, revisions of final
            windows, and current values when ``emit_interval_ms`` has passed.
        """
        dims, slots = self._contribution(new)
        leaf = self._leaf(dims)
        update = self._update
        if old is None:
            for k, item in slots.items():
                update(k, leaf, item, 1)
            if self._missed:
                self._record_late(new)
            return self._observe(new.updated_at_ms)
        old_dims, old_slots = self._contribution(old)
        if old_dims != dims:
            self._retract_slots(self._leaf(old_dims), old_slots)
            for k, item in slots.items():
                update(k, leaf, item, 1)
        elif old_slots != slots:
            # Only what changed: a new revision usually adds one stage to a record.
            for k, before in old_slots.items():
                after = slots.get(k)
                if before != after:
                    update(k, leaf, before, -1)
                    if after is not None:
                        update(k, leaf, after, 1)
            for k, after in slots.items():
                if k not in old_slots:
                    update(k, leaf, after, 1)
        if self._missed:
            self._record_late(new)
        return self._observe(new.updated_at_ms)

    def retract(self, old: LineageRecord) -> None:
        """Removes a record's contribution without a replacement (a deleted lineage key).

        Moves no time: the changed windows are emitted with the next values due.
        """
        dims, slots = self._contribution(old)
        self._retract_slots(self._leaf(dims), slots)
        if self._missed:
            self._record_late(old)

    def _retract_slots(self, leaf: int, slots: dict[int, Item]) -> None:
        for k, item in slots.items():
            self._update(k, leaf, item, -1)

    def advance(self, watermark_ms: int) -> list[KpiValue]:
        """Moves the watermark to ``watermark_ms``; returns the values that makes due.

        Called by the driver whenever its combined watermark moves (see the module
        docstring). A watermark not after the current one changes nothing.
        """
        if watermark_ms <= self._wm:
            return []
        rows = self._advance_watermark(watermark_ms)
        return _values(rows) if rows else []

    def take_late(self) -> list[DeadLetter]:
        """Returns (and forgets) the dead letters of contributions that came too late.

        One per lineage revision that reached a closed window, naming the windows it
        missed; the revision itself is the dead letter's value (JSON).
        """
        late, self._late = self._late, []
        return late

    def _record_late(self, record: LineageRecord) -> None:
        missed = sorted(set(self._missed))
        self._missed.clear()
        parts = []
        for k, s, start in missed:
            if s == 0:
                parts.append(f"{KPIS[k].name} 1h window at {_iso(start)}")
            else:
                sizes = "/".join(n for i, n in ((1, "1d"), (2, "7d"), (3, "30d")) if _ALLOWED[k][i])
                day = _iso(start)[:10]
                parts.append(f"{KPIS[k].name}: the closed ones of its {sizes} windows with {day}")
        key = [record.site_id, record.study_uid, record.algorithm_name, record.finding_code]
        self._late.append(
            DeadLetter(
                reason=DeadLetterReason.LATE_AFTER_WINDOW_CLOSED,
                message=(
                    f"lineage row {key} revision {record.revision} reached KPI windows "
                    f"closed {self._horizon // _H} h after their end (KPI watermark "
                    f"{_iso(self._wm)}); left out of: {'; '.join(parts)}"
                ),
                value=record.model_dump_json().encode(),
                study_uid=record.study_uid,
            )
        )

    def emit_current(self) -> list[KpiValue]:
        """Returns current values of changed open windows and revisions of final ones.

        What ``apply`` returns every ``emit_interval_ms``, now; for callers that pace
        it themselves (``current_on_demand``). Nothing before the first record.
        """
        if self._max_event_ms is None:
            return []
        return _values(self._emit(self._late_candidates() | self._current_candidates()))

    def close_all(self) -> list[KpiValue]:
        """Makes every window final (end of input) and returns what that emits.

        The watermark moves to the end of the last window holding data; later
        records are late for every window before it.
        """
        end = self._wm
        if self._hour_index:
            end = max(end, _floor(max(self._hour_index), _D) + _SIZE_MS[-1])
        if self._day_index:
            end = max(end, max(self._day_index) + _SIZE_MS[-1])
        if end > self._wm:
            rows = self._advance_watermark(end)
        else:
            rows = self._emit(self._late_candidates())
        self._dirty.clear()
        return _values(rows)

    # -- hot path ----------------------------------------------------------------

    def _leaf(self, dims: Dims) -> int:
        leaf = self._leaf_ids.get(dims)
        if leaf is None:
            leaf = self._leaf_ids[dims] = len(self._leaf_combos)
            site, algorithm, version, finding = dims
            rolled = (
                self._combo((site, algorithm, "*", finding), leaf),
                self._combo(("*", algorithm, "*", finding), leaf),
            )
            if version == NO_VERSION:
                self._leaf_combos.append((rolled, rolled))
            else:
                versioned = (
                    self._combo(dims, leaf),
                    self._combo(("*", algorithm, version, finding), leaf),
                    *rolled,
                )
                self._leaf_combos.append((versioned, rolled))
        return leaf

    def _combo(self, dims: Dims, leaf: int) -> int:
        combo = self._combo_ids.get(dims)
        if combo is None:
            combo = self._combo_ids[dims] = len(self._combo_dims)
            self._combo_dims.append(dims)
            self._combo_leaves.append([])
        self._combo_leaves[combo].append(leaf)
        return combo

    def _update(self, k: int, leaf: int, item: Item, sign: int) -> None:
        """Adds (sign 1) or retracts (-1) one KPI contribution of a record."""
        t, x, y = item
        h = t - t % _H
        if h < self._live_hour:
            self._update_late(k, leaf, t, x, y, sign)
            return
        kind = _KINDS[k]
        if kind is _DURATION:
            if not self._bucket_pane(self._hour_buckets, self._hour_index, (k, leaf, h), x, sign):
                return
        elif kind is _SCORE:
            # Scores go to day panes directly (no hourly PSI) and feed the reference.
            d = t - t % _D
            if not self._score_pane((k, leaf, d), x, sign):
                return
            if d < self._psi.leaf_ends.get(leaf, _MAX_MS):
                self._psi.update(leaf, self._leaf_combos[leaf][0], d, x, sign)
        elif sign > 0:
            # Proportions and counts, inlined: most contributions take this branch.
            hk = (k, leaf, h)
            pane = self._hour_lists.get(hk)
            if pane is None:
                self._hour_lists[hk] = [x, y]
                self._hour_index.setdefault(h, set()).add((k, leaf))
            else:
                pane[0] += x
                pane[1] += y
        elif not self._list_pane(self._hour_lists, self._hour_index, (k, leaf, h), x, y, -1):
            return
        if self._current:
            self._dirty.add((k, leaf, h))

    def _list_pane(
        self,
        panes: dict[_PaneKey, list[int]],
        index: dict[int, set[tuple[int, int]]],
        key: _PaneKey,
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
            self._refused += 1
            return False
        pane[0] -= x
        pane[1] -= y
        return True

    def _score_pane(self, key: _PaneKey, bin_index: int, sign: int) -> bool:
        """Adds or retracts one score in a day pane; False if refused."""
        pane = self._day_lists.get(key)
        if sign > 0:
            if pane is None:
                pane = self._day_lists[key] = [0] * PSI_BINS
                self._day_index.setdefault(key[2], set()).add((key[0], key[1]))
            pane[bin_index] += 1
            return True
        if pane is None or pane[bin_index] < 1:
            self._refused += 1
            return False
        pane[bin_index] -= 1
        return True

    def _bucket_pane(
        self,
        panes: dict[_PaneKey, dict[int, int]],
        index: dict[int, set[tuple[int, int]]],
        key: _PaneKey,
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
            self._refused += 1
            return False
        if have == 1:
            del pane[bucket]
        else:
            pane[bucket] = have - 1
        return True

    def _update_late(self, k: int, leaf: int, t: int, x: int, y: int, sign: int) -> None:
        """A contribution to a window that is already final (maybe closed): slow path."""
        h, d = _floor(t, _H), _floor(t, _D)
        kind = _KINDS[k]
        compacted = d < self._compacted_to
        if kind is not _SCORE:  # (scores have no hour panes)
            if h < self._open_hour:
                self._too_late["1h"] += 1
                if _ALLOWED[k][0]:
                    self._missed.append((k, 0, h))
            # The hour pane is also needed while its day is not compacted yet.
            if h >= self._open_hour or not compacted:
                key = (k, leaf, h)
                if kind is _DURATION:
                    ok = self._bucket_pane(self._hour_buckets, self._hour_index, key, x, sign)
                else:
                    ok = self._list_pane(self._hour_lists, self._hour_index, key, x, y, sign)
                if not ok:
                    return
        if d + _D + self._horizon <= self._wm:
            # The earliest-ending 1 d, 7 d and 30 d windows around d all end at d + 1 d.
            for name in ("1d", "7d", "30d"):
                self._too_late[name] += 1
            self._missed.append((k, 1, d))
        if kind is _SCORE or compacted:
            if d >= self._open_day:
                self._drop_slides(k, leaf, d)
                if kind is _DURATION:
                    self._bucket_pane(self._day_buckets, self._day_index, (k, leaf, d), x, sign)
                elif kind is not _SCORE:
                    self._list_pane(self._day_lists, self._day_index, (k, leaf, d), x, y, sign)
                elif self._score_pane((k, leaf, d), x, sign):
                    self._psi.update(leaf, self._leaf_combos[leaf][0], d, x, sign)
            elif kind is _SCORE:
                # The reference outlives the panes: keep it a function of all revisions.
                self._psi.update(leaf, self._leaf_combos[leaf][0], d, x, sign)
        self._late_dirty.add((k, leaf, h))
        if self._current:
            self._dirty.add((k, leaf, h))

    def _drop_slides(self, k: int, leaf: int, day: int) -> None:
        """Forgets the slides covering a day pane that changed after it was final."""
        for combo in self._leaf_combos[leaf][0]:
            for s in (2, 3):
                slide = self._slides.get((k, combo, s))
                if slide is not None and slide[0] <= day < slide[0] + _SIZE_MS[s]:
                    del self._slides[(k, combo, s)]

    # -- watermark and emission ---------------------------------------------------

    def _observe(self, event_time_ms: int) -> list[KpiValue]:
        """Paces current values (``emit_interval_ms`` of record time); moves no watermark."""
        if self._max_event_ms is None or event_time_ms > self._max_event_ms:
            self._max_event_ms = event_time_ms
            if self._last_emit_ms is None:
                self._last_emit_ms = event_time_ms
        if (
            self._interval is not None
            and self._last_emit_ms is not None
            and self._max_event_ms - self._last_emit_ms >= self._interval
        ):
            self._last_emit_ms = self._max_event_ms
            rows = self._emit(self._late_candidates() | self._current_candidates())
            return _values(rows) if rows else []
        return []

    def _advance_watermark(self, wm: int) -> list[_Row]:
        """Moves the watermark; on crossing an hour boundary, finalizes and prunes.

        Window ends are whole hours and the horizon a multiple of one hour, so which
        windows are final or closed only changes when the watermark crosses an hour.
        """
        old = self._wm
        if wm < self._next_boundary:
            self._wm = wm
            return []
        # 1. Revisions of windows that were final before, at the old watermark: this
        # advance may close them and drop their panes.
        out = self._emit(self._late_candidates())
        # 2. Windows that just became final.
        self._wm = wm
        self._next_boundary = wm - wm % _H + _H
        x = wm - _H
        self._live_hour = x - x % _H + _H  # hours whose 1 h window is not final
        x -= self._horizon
        self._open_hour = x - x % _H + _H  # hours whose 1 h window is not closed
        # Days some window still needs; one more day for the 30 d slide (_aggregate).
        x = wm - _SIZE_MS[-1] - _D - self._horizon
        self._open_day = x - x % _D + _D
        self._compact(wm - wm % _D)
        out.extend(self._emit(self._finalized_candidates(old, wm)))
        # 3. Panes of closed windows.
        self._prune()
        return out

    def _compact(self, upto: int) -> None:
        """Builds the day panes of days before ``upto`` (final days) from their hours."""
        if upto <= self._compacted_to:
            return
        low = self._compacted_to
        self._compacted_to = upto
        for h in sorted(self._hour_index):
            if not low <= h < upto:
                continue
            d = h - h % _D
            for k, leaf in self._hour_index[h]:
                key, day_key = (k, leaf, h), (k, leaf, d)
                if _KINDS[k] is _DURATION:
                    buckets = self._hour_buckets.get(key)
                    if buckets is not None:
                        day_buckets = self._day_buckets.setdefault(day_key, {})
                        add_counts(day_buckets, (buckets,))
                else:
                    pane = self._hour_lists.get(key)
                    if pane is not None:
                        day_pane = self._day_lists.setdefault(day_key, [0, 0])
                        day_pane[0] += pane[0]
                        day_pane[1] += pane[1]
                self._day_index.setdefault(d, set()).add((k, leaf))

    def _finalized_candidates(self, old: int, wm: int) -> set[_Cand]:
        """(kpi, leaf, size, start) of windows with data whose end is in (old, wm]."""
        cands: set[_Cand] = set()
        for h, pairs in self._hour_index.items():
            if old < h + _H <= wm:
                cands.update((k, leaf, 0, h) for k, leaf in pairs)
        if _floor(wm, _D) <= old:
            return cands  # no day boundary crossed: no 1 d, 7 d or 30 d window ended
        for s in range(1, len(WINDOW_SPECS)):
            size = _SIZE_MS[s]
            starts = {
                start
                for d in self._day_index
                for start in range(d - size + _D, d + 1, _D)
                if old < start + size <= wm
            }
            for start in starts:
                for day in range(start, start + size, _D):
                    for k, leaf in self._day_index.get(day, ()):
                        cands.add((k, leaf, s, start))
        return cands

    def _late_candidates(self) -> set[_Cand]:
        """Final, not yet closed windows containing panes changed after they were final."""
        cands: set[_Cand] = set()
        wm, horizon = self._wm, self._horizon
        for k, leaf, h in self._late_dirty:
            if h + _H <= wm < h + _H + horizon:
                cands.add((k, leaf, 0, h))
            d = h - h % _D
            for s in range(1, len(WINDOW_SPECS)):
                size = _SIZE_MS[s]
                for start in range(d - size + _D, d + 1, _D):
                    if start + size <= wm < start + size + horizon:
                        cands.add((k, leaf, s, start))
        self._late_dirty.clear()
        cands.update(self._psi_candidates(final=True))
        return cands

    def _current_candidates(self) -> set[_Cand]:
        """The next-closing window of each size around every pane changed since last time."""
        cands: set[_Cand] = set()
        wm = self._wm
        days: set[tuple[int, int, int]] = set()
        for k, leaf, h in self._dirty:
            if h + _H > wm:
                cands.add((k, leaf, 0, h))
            days.add((k, leaf, h - h % _D))
        self._dirty.clear()
        for k, leaf, d in days:
            for s in range(1, len(WINDOW_SPECS)):
                size = _SIZE_MS[s]
                x = wm - size
                start = max(d - size + _D, x - x % _D + _D)
                if start <= d:
                    cands.add((k, leaf, s, start))
        cands.update(self._psi_candidates(final=False))
        return cands

    def _psi_candidates(self, *, final: bool) -> set[_Cand]:
        """PSI windows of series whose reference changed: open windows after the reference."""
        changed = self._psi.changed
        if not changed:
            return set()
        cands: set[_Cand] = set()
        wm, horizon = self._wm, self._horizon
        firsts = [self._psi.first_day(c) for c in changed]
        after = min(f for f in firsts if f is not None) + self._psi.reference_ms
        leaves = {leaf for combo in changed for leaf in self._combo_leaves[combo]}
        for d, pairs in self._day_index.items():
            if d < after:
                continue  # every window containing d starts before any changed reference ends
            for k, leaf in pairs:
                if k != _PSI or leaf not in leaves:
                    continue
                for s in range(1, len(WINDOW_SPECS)):
                    size = _SIZE_MS[s]
                    for start in range(max(d - size + _D, after), d + 1, _D):
                        end = start + size
                        if (end <= wm < end + horizon) if final else end > wm:
                            cands.add((k, leaf, s, start))
        if not final or not self._current:
            changed.clear()
        return cands

    def _prune(self) -> None:
        """Drops panes and emitted-window entries of closed windows."""
        for index, open_from, lists, buckets in (
            (
                self._hour_index,
                min(self._open_hour, self._compacted_to),
                self._hour_lists,
                self._hour_buckets,
            ),
            (self._day_index, self._open_day, self._day_lists, self._day_buckets),
        ):
            for start in [p for p in index if p < open_from]:
                for k, leaf in index.pop(start):
                    lists.pop((k, leaf, start), None)
                    buckets.pop((k, leaf, start), None)
        for s, emitted in enumerate(self._emitted):
            closed = self._wm - _SIZE_MS[s] - self._horizon
            for start in [p for p in emitted if p <= closed]:
                del emitted[start]

    def _emit(self, cands: Iterable[_Cand]) -> list[_Row]:
        """Computes candidate windows for every series their leaf belongs to.

        A window is emitted when it became final, when its final value changed
        (``revision + 1``), or when its current value changed.
        """
        wm = self._wm
        keys: set[_Cand] = set()
        for k, leaf, s, start in cands:
            if _ALLOWED[k][s]:
                combos = self._leaf_combos[leaf][0 if KPIS[k].versioned else 1]
                keys.update((k, combo, s, start) for combo in combos)
        rows: list[_Row] = []
        # Sorted so that consecutive final windows of a series slide (see _aggregate).
        for k, combo, s, start in sorted(keys):
            final = start + _SIZE_MS[s] <= wm
            summary = self._summary(k, combo, s, start, final)
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
            rows.append((s, start, k, self._combo_dims[combo], revision, final, summary))
        return rows

    def _summary(self, k: int, combo: int, s: int, start: int, final: bool) -> Summary | None:
        """Returns the value of a window for a series; None when it has no data."""
        spec = KPIS[k]
        if spec.kind is _SCORE:
            reference = self._psi.reference(combo, self._combo_leaves[combo])
            if reference is None or start < reference[0]:
                return None  # windows overlapping the reference period get no PSI
            bins = self._aggregate(k, combo, s, start, final)
            assert isinstance(bins, list)
            psi = population_stability_index(bins, reference[1], self._cfg.psi_epsilon)
            return None if psi is None else (None, float(sum(bins)), psi, None, None, None, None)
        agg = self._aggregate(k, combo, s, start, final)
        if isinstance(agg, dict):
            return summarise_durations(agg, self._gamma)
        return summarise_counts(spec, agg[0], agg[1])

    def _aggregate(self, k: int, combo: int, s: int, start: int, final: bool) -> _Pane:
        """Merges the panes of a window over the leaves of a series.

        Final rolling windows *slide*: the window starting a day later is the previous
        one minus its first day plus the new last day. That is exact because a final
        window's panes only change through late contributions, which drop the slide.
        """
        leaves = self._combo_leaves[combo]
        kind = _KINDS[k]
        panes: dict[_PaneKey, list[int]] | dict[_PaneKey, dict[int, int]]
        if s == 0:
            panes = self._hour_buckets if kind is _DURATION else self._hour_lists
            return merge_counts([panes.get((k, leaf, start)) for leaf in leaves], _EMPTY_OF[k])
        panes = self._day_buckets if kind is _DURATION else self._day_lists
        size = _SIZE_MS[s]
        if s < 2 or not final:
            parts: list[_Pane | None] = []
            for d in range(start, start + size, _D):
                if d < self._compacted_to or kind is _SCORE:
                    parts.extend(panes.get((k, leaf, d)) for leaf in leaves)
                else:  # an open day: merge its hours
                    hours = self._hour_buckets if kind is _DURATION else self._hour_lists
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


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _values(rows: list[_Row]) -> list[KpiValue]:
    """Returns the KPI values of emitted rows in a deterministic order.

    Sorted by window size, window start, KPI catalogue order, then dimensions.
    """
    rows.sort(key=lambda row: row[:6])  # never compares values (None vs float)
    return [
        kpi_value(k, s, start, dims, rev, final, v) for s, start, k, dims, rev, final, v in rows
    ]
