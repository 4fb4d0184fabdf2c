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
  ``refused_retractions``;
- with ``kpi_windows`` only those (KPI, window size) pairs are emitted, each exactly
  as without the restriction (a driver that needs a few, such as the breach policy
  simulator, skips computing the rest).

Revisions of one lineage key must arrive in order (the joiner emits them so); keys
may interleave in any order. For any such interleaving, the last value of every window
equals the batch recomputation, as long as no contribution was ``too_late``.

The aggregator is the driver: it routes contributions to panes and moves time. The
panes and the windows merged from them are in ``streams.core.kpi.panes``, the series
ids in ``streams.core.kpi.series``, which windows are due and their values and
revisions in ``streams.core.kpi.emission``, the wording of late dead letters in
``streams.core.kpi.late``.
"""

from __future__ import annotations

from collections.abc import Collection

from schemas.records import DeadLetter, KpiValue, LineageRecord
from schemas.units import DAY_MS, HOUR_MS
from streams.core.kpi.catalogue import (
    KPIS,
    ContributionBuilder,
    Item,
    KpiKind,
    RecordContribution,
)
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.drift import SeriesReferences
from streams.core.kpi.emission import Cand, Row, WindowEmitter, kpi_values
from streams.core.kpi.late import late_dead_letter
from streams.core.kpi.panes import ALLOWED, KINDS, MIN_MS, SIZE_MS, PaneStore, StateError
from streams.core.kpi.series import SeriesIndex
from streams.core.kpi.state_schema import AggregatorState
from streams.core.kpi.windows import WINDOW_SPECS

__all__ = ["KpiAggregator", "may_be_late"]


_H, _D = HOUR_MS, DAY_MS
_MAX_MS = 1 << 62
_DURATION, _SCORE = KpiKind.DURATION, KpiKind.SCORE


def _floor(ms: int, unit: int) -> int:
    return ms - ms % unit


class KpiAggregator:
    """Windowed KPI state for all series; see the module docstring for the contract.

    Args:
        config: KPI options; defaults documented in ``streams.core.kpi.config``.
        current_on_demand: current values are emitted only by ``emit_current``
            (``emit_interval_ms`` is ignored); final values stay driven by event time.
        kpi_windows: the (KPI name, window size) pairs to emit, e.g.
            ``{("alert_ppv", "30d")}``; None: every KPI and window of the catalogue.

    Raises:
        ValueError: ``kpi_windows`` names a KPI or window size that does not exist.
    """

    def __init__(
        self,
        config: KpiConfig | None = None,
        *,
        current_on_demand: bool = False,
        kpi_windows: Collection[tuple[str, str]] | None = None,
    ) -> None:
        cfg = self._config = config or KpiConfig()
        self._wanted = None if kpi_windows is None else _wanted_indices(kpi_windows)
        self._contribution = ContributionBuilder(cfg)
        self._horizon = cfg.late_horizon_ms
        self._interval = None if current_on_demand else cfg.emit_interval_ms
        # Whether changed open windows are tracked (for current values) at all.
        self._current = current_on_demand or cfg.emit_interval_ms is not None
        # Series: leaves are what records carry, combos what values are emitted for.
        self._series = SeriesIndex()
        self._panes = panes = PaneStore()
        # The pane dicts themselves, read directly on the hot path (the store never rebinds them).
        self._hour_lists, self._day_lists = panes.hour_lists, panes.day_lists
        self._hour_buckets, self._day_buckets = panes.hour_buckets, panes.day_buckets
        self._hour_index, self._day_index = panes.hour_index, panes.day_index
        self._psi = SeriesReferences(cfg.psi_reference_ms)
        self._emitter = WindowEmitter(
            cfg, panes, self._series, self._psi, track_current=self._current
        )
        # By KPI, the leaves that ever had a contribution to it (the emitter's).
        self._data_leaves = self._emitter.data_leaves
        self._max_event_ms: int | None = None
        self._last_emit_ms: int | None = None
        self._wm = MIN_MS
        self._next_boundary = MIN_MS
        self._live_hour = self._open_hour = self._open_day = MIN_MS
        self._too_late = {size.name: 0 for size in WINDOW_SPECS}
        # Closed windows missed by the record being applied: (kpi, size, pane start).
        self._missed: list[tuple[int, int, int]] = []
        self._late: list[DeadLetter] = []

    # -- observability -------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        """The KPI watermark, None before the first ``advance``."""
        return None if self._wm == MIN_MS else self._wm

    @property
    def config(self) -> KpiConfig:
        """The KPI settings the aggregator was built with."""
        return self._config

    @property
    def too_late(self) -> dict[str, int]:
        """Contributions that reached a closed window, by window size (never dropped silently)."""
        return dict(self._too_late)

    @property
    def refused_retractions(self) -> int:
        """Retractions refused because they would have made a count negative."""
        return self._panes.refused

    def state_size(self) -> dict[str, int]:
        """Returns the number of panes, emitted-window entries and series held."""
        return {
            "hour_panes": len(self._hour_lists) + len(self._hour_buckets),
            "day_panes": len(self._day_lists) + len(self._day_buckets),
            "emitted_windows": self._emitter.emitted_windows(),
            "series": len(self._series.combo_dims),
        }

    def state(self) -> dict[str, object]:
        """The whole state as plain data, in the shape of ``AggregatorState``.

        Called between records (late dead letters taken): what a snapshot stores.

        Raises:
            RuntimeError: late dead letters were not taken yet.
        """
        if self._late or self._missed:
            raise RuntimeError("take_late() before the aggregator's state is stored")
        return {
            "leaves": self._series.leaves,
            "max_event_ms": self._max_event_ms,
            "last_emit_ms": self._last_emit_ms,
            "watermark_ms": self._wm,
            "next_boundary_ms": self._next_boundary,
            "live_hour_ms": self._live_hour,
            "open_hour_ms": self._open_hour,
            "open_day_ms": self._open_day,
            "too_late": dict(self._too_late),
            "panes": self._panes.state(),
            "references": self._psi.state(),
            "emitter": self._emitter.state(),
        }

    def load(self, state: AggregatorState) -> None:
        """Fills a new aggregator (built from the current settings) with stored state.

        Raises:
            ValueError: the aggregator already holds data, or the state does not fit
                this release (``StateError``: an unknown KPI or window size, a pane of
                the wrong shape) or these settings (another PSI reference period).
        """
        if self._max_event_ms is not None or self._wm != MIN_MS:
            raise ValueError("stored state is loaded into a new aggregator only")
        unknown = set(state.too_late) - set(self._too_late)
        if unknown:
            raise StateError(f"the stored state counts late contributions of {sorted(unknown)}")
        self._series.load(state.leaves)
        self._panes.load(state.panes)
        self._psi.load(state.references)
        self._emitter.load(state.emitter)
        self._max_event_ms = state.max_event_ms
        self._last_emit_ms = state.last_emit_ms
        self._wm = state.watermark_ms
        self._next_boundary = state.next_boundary_ms
        self._live_hour = state.live_hour_ms
        self._open_hour = state.open_hour_ms
        self._open_day = state.open_day_ms
        self._too_late.update(state.too_late)

    # -- input -------------------------------------------------------------------

    def apply(self, old: LineageRecord | None, new: LineageRecord) -> list[KpiValue]:
        """Replaces the contribution of ``old`` by that of ``new``; called per revision.

        Returns:
            KPI values due now: windows the watermark made final, revisions of final
            windows, and current values when ``emit_interval_ms`` has passed.
        """
        before = None if old is None else self._contribution(old)
        return self.apply_contribution(before, self._contribution(new), new.updated_at_ms, new)

    def apply_contribution(
        self,
        old: RecordContribution | None,
        new: RecordContribution,
        updated_at_ms: int,
        record: LineageRecord | None,
    ) -> list[KpiValue]:
        """``apply`` for contributions computed elsewhere (``ContributionBuilder``).

        Args:
            old: the contribution of the revision replaced (None for revision 1).
            new: the contribution of the new revision.
            updated_at_ms: the new revision's ``updated_at_ms``.
            record: the new revision, for the dead letter when the contribution reaches
                a closed window. May be None only when it cannot: no event time of
                either contribution is before the watermark minus the late horizon
                (``may_be_late``).

        Raises:
            ValueError: ``record`` is None and the contribution reached a closed window.
        """
        dims, slots = new
        leaf = self._series.leaf(dims)
        update = self._update
        if old is None:
            for k, item in slots.items():
                update(k, leaf, item, 1)
            if self._missed:
                self._record_late(_needed(record))
            return self._observe(updated_at_ms)
        old_dims, old_slots = old
        if old_dims != dims:
            self._retract_slots(self._series.leaf(old_dims), old_slots)
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
            self._record_late(_needed(record))
        return self._observe(updated_at_ms)

    def retract(self, old: LineageRecord) -> None:
        """Removes a record's contribution without a replacement (a deleted lineage key).

        Moves no time: the changed windows are emitted with the next values due.
        """
        dims, slots = self._contribution(old)
        self._retract_slots(self._series.leaf(dims), slots)
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
        return kpi_values(rows) if rows else []

    def take_late(self) -> list[DeadLetter]:
        """Returns (and forgets) the dead letters of contributions that came too late.

        One per lineage revision that reached a closed window, naming the windows it
        missed; the revision itself is the dead letter's value (JSON).
        """
        late, self._late = self._late, []
        return late

    def _record_late(self, record: LineageRecord) -> None:
        self._late.append(late_dead_letter(record, self._missed, self._horizon, self._wm))
        self._missed.clear()

    def emit_current(self) -> list[KpiValue]:
        """Returns current values of changed open windows and revisions of final ones.

        What ``apply`` returns every ``emit_interval_ms``, now; for callers that pace
        it themselves (``current_on_demand``). Nothing before the first record.
        """
        if self._max_event_ms is None:
            return []
        emitter, wm = self._emitter, self._wm
        cands = emitter.late_candidates(wm) | emitter.current_candidates(wm)
        return kpi_values(self._emit(cands, wm))

    def close_all(self) -> list[KpiValue]:
        """Makes every window final (end of input) and returns what that emits.

        The watermark moves to the end of the last window holding data; later
        records are late for every window before it.
        """
        end = self._wm
        if self._hour_index:
            end = max(end, _floor(max(self._hour_index), _D) + SIZE_MS[-1])
        if self._day_index:
            end = max(end, max(self._day_index) + SIZE_MS[-1])
        if end > self._wm:
            rows = self._advance_watermark(end)
        else:
            rows = self._emit(self._emitter.late_candidates(self._wm), self._wm)
        self._emitter.dirty.clear()
        return kpi_values(rows)

    # -- hot path ----------------------------------------------------------------

    def _update(self, k: int, leaf: int, item: Item, sign: int) -> None:
        """Adds (sign 1) or retracts (-1) one KPI contribution of a record."""
        seen = self._data_leaves[k]
        if leaf not in seen:
            self._emitter.add_data_leaf(k, leaf)
        t, x, y = item
        h = t - t % _H
        if h < self._live_hour:
            self._update_late(k, leaf, t, x, y, sign)
            return
        kind = KINDS[k]
        if kind is _DURATION:
            if not self._panes.bucket_pane(
                self._hour_buckets, self._hour_index, (k, leaf, h), x, sign
            ):
                return
        elif kind is _SCORE:
            # Scores go to day panes directly (no hourly PSI) and feed the reference.
            d = t - t % _D
            if not self._panes.score_pane((k, leaf, d), x, sign):
                return
            if d < self._psi.leaf_ends.get(leaf, _MAX_MS):
                self._psi.update(leaf, self._series.leaf_combos[leaf][0], d, x, sign)
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
        elif not self._panes.list_pane(self._hour_lists, self._hour_index, (k, leaf, h), x, y, -1):
            return
        if self._current:
            self._emitter.dirty.add((k, leaf, h))

    def _update_late(self, k: int, leaf: int, t: int, x: int, y: int, sign: int) -> None:
        """A contribution to a window that is already final (maybe closed): slow path."""
        h, d = _floor(t, _H), _floor(t, _D)
        kind = KINDS[k]
        compacted = d < self._panes.compacted_to
        if kind is not _SCORE:  # (scores have no hour panes)
            if h < self._open_hour and ALLOWED[k][0]:
                self._too_late["1h"] += 1
                self._missed.append((k, 0, h))
            # The hour pane is also needed while its day is not compacted yet.
            if h >= self._open_hour or not compacted:
                key = (k, leaf, h)
                if kind is _DURATION:
                    ok = self._panes.bucket_pane(self._hour_buckets, self._hour_index, key, x, sign)
                else:
                    ok = self._panes.list_pane(self._hour_lists, self._hour_index, key, x, y, sign)
                if not ok:
                    return
        if d + _D + self._horizon <= self._wm:
            # The earliest-ending 1 d, 7 d and 30 d windows around d all end at d + 1 d.
            for name in ("1d", "7d", "30d"):
                self._too_late[name] += 1
            self._missed.append((k, 1, d))
        if kind is _SCORE or compacted:
            if d >= self._open_day:
                self._panes.drop_slides(k, self._series.leaf_combos[leaf][0], d)
                if kind is _DURATION:
                    self._panes.bucket_pane(
                        self._day_buckets, self._day_index, (k, leaf, d), x, sign
                    )
                elif kind is not _SCORE:
                    self._panes.list_pane(
                        self._day_lists, self._day_index, (k, leaf, d), x, y, sign
                    )
                elif self._panes.score_pane((k, leaf, d), x, sign):
                    self._psi.update(leaf, self._series.leaf_combos[leaf][0], d, x, sign)
            elif kind is _SCORE:
                # The reference outlives the panes: keep it a function of all revisions.
                self._psi.update(leaf, self._series.leaf_combos[leaf][0], d, x, sign)
        self._emitter.late_dirty.add((k, leaf, h))
        if self._current:
            self._emitter.dirty.add((k, leaf, h))

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
            emitter, wm = self._emitter, self._wm
            rows = self._emit(emitter.late_candidates(wm) | emitter.current_candidates(wm), wm)
            return kpi_values(rows) if rows else []
        return []

    def _advance_watermark(self, wm: int) -> list[Row]:
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
        emitter = self._emitter
        out = self._emit(emitter.late_candidates(old), old)
        # 2. Windows that just became final.
        self._wm = wm
        self._next_boundary = wm - wm % _H + _H
        x = wm - _H
        self._live_hour = x - x % _H + _H  # hours whose 1 h window is not final
        x -= self._horizon
        self._open_hour = x - x % _H + _H  # hours whose 1 h window is not closed
        # Days some window still needs; one more day for the 30 d slide (PaneStore.aggregate).
        x = wm - SIZE_MS[-1] - _D - self._horizon
        self._open_day = x - x % _D + _D
        self._panes.compact(wm - wm % _D)
        out.extend(self._emit(emitter.finalized_candidates(old, wm), wm))
        # 3. Panes and emitted-window entries of closed windows.
        self._panes.prune(self._open_hour, self._open_day)
        emitter.prune(wm)
        return out

    def _emit(self, cands: set[Cand], wm: int) -> list[Row]:
        """The emitter's rows of ``cands``, restricted to ``kpi_windows`` when given."""
        if self._wanted is not None:
            wanted = self._wanted
            cands = {c for c in cands if (c[0], c[2]) in wanted}
        return self._emitter.emit(cands, wm)


def may_be_late(
    watermark_ms: int | None,
    late_horizon_ms: int,
    old: RecordContribution | None,
    new: RecordContribution,
) -> bool:
    """Whether a contribution could reach a closed window at ``watermark_ms``.

    A window is closed ``late_horizon_ms`` after its end, so only event times before
    the watermark minus the horizon can reach one; a driver that computes contributions
    apart from the aggregator sends the revision along only then.
    """
    if watermark_ms is None:
        return False
    closed_before = watermark_ms - late_horizon_ms
    for contribution in (old, new):
        if contribution is not None:
            for t, _, _ in contribution[1].values():
                if t < closed_before:
                    return True
    return False


def _needed(record: LineageRecord | None) -> LineageRecord:
    if record is None:
        raise ValueError("a contribution reached a closed KPI window without its revision")
    return record


def _wanted_indices(kpi_windows: Collection[tuple[str, str]]) -> frozenset[tuple[int, int]]:
    """(KPI index, window size index) of each (KPI name, window size) pair.

    Raises:
        ValueError: an unknown KPI or window size, or a size the KPI has no windows of.
    """
    kpi_index = {spec.name: k for k, spec in enumerate(KPIS)}
    size_index = {spec.name: s for s, spec in enumerate(WINDOW_SPECS)}
    wanted: set[tuple[int, int]] = set()
    for kpi, window in kpi_windows:
        if kpi not in kpi_index:
            raise ValueError(f"unknown KPI {kpi!r}")
        if window not in size_index:
            raise ValueError(f"unknown window size {window!r}; sizes are {list(size_index)}")
        if window not in KPIS[kpi_index[kpi]].window_sizes:
            sizes = ", ".join(KPIS[kpi_index[kpi]].window_sizes)
            raise ValueError(f"{kpi} has no {window} windows (it has {sizes})")
        wanted.add((kpi_index[kpi], size_index[window]))
    return frozenset(wanted)
