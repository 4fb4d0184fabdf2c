"""KpiAggregator: streamed values equal the batch recomputation, whatever the order."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import KpiValue
from schemas.units import DAY_MS, HOUR_MS
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.state_schema import AggregatorState
from tests.unit.core.kpi.test_batch import (
    Key,
    assert_matches_batch,
    batch_kpis,
    chain,
    feed,
    interleave,
    last_values,
    random_studies,
    time_ordered,
    window_key,
)

REFERENCE = 1 * DAY_MS  # short PSI reference so that PSI windows exist in a few days of data


def run(pairs: list, config: KpiConfig | None = None) -> tuple[KpiAggregator, list[KpiValue]]:
    aggregator = KpiAggregator(config or KpiConfig(psi_reference_ms=REFERENCE))
    values: list[KpiValue] = []
    for old, new in pairs:
        values += feed(aggregator, old, new)
    values += aggregator.close_all()
    return aggregator, values


def finals(chains: list) -> list:
    return [c[-1] for c in chains if c]


def test_time_ordered_stream_equals_batch() -> None:
    chains = [chain(s) for s in random_studies(random.Random(1), 400)]
    aggregator, values = run(time_ordered(chains))
    assert_matches_batch(last_values(values), batch_kpis(finals(chains), REFERENCE))
    assert aggregator.refused_retractions == 0
    assert set(aggregator.too_late.values()) == {0}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), shuffle=st.integers(0, 2**32))
def test_any_interleaving_gives_the_batch_values(seed: int, n: int, shuffle: int) -> None:
    chains = [chain(s) for s in random_studies(random.Random(seed), n)]
    _, in_order = run(time_ordered(chains))
    # A random interleaving can hold a key's revisions back by more than the default
    # 7-day late horizon, after which a window is closed by contract (too_late). The
    # property is about order, so give the horizon room for any disorder generated.
    horizon = KpiConfig(psi_reference_ms=REFERENCE, late_horizon_ms=90 * DAY_MS)
    aggregator, shuffled = run(interleave(chains, random.Random(shuffle)), horizon)
    assert set(aggregator.too_late.values()) == {0}
    expected = batch_kpis(finals(chains), REFERENCE)
    assert_matches_batch(last_values(shuffled), expected)
    assert_matches_batch(last_values(in_order), expected)
    assert aggregator.refused_retractions == 0


@pytest.mark.parametrize("seed", [0, 269])
def test_rolling_windows_from_panes_equal_direct_computation(seed: int) -> None:
    """45 days with disorder of up to 3 days: 7 d / 30 d windows slide over late data."""
    rng = random.Random(seed)
    chains = [chain(s) for s in random_studies(rng, 300, span_ms=45 * DAY_MS)]
    pairs = [(old, new) for c in chains for old, new in zip([None, *c], c, strict=False)]
    delay = {id(new): rng.randrange(3 * DAY_MS) if rng.random() < 0.2 else 0 for _, new in pairs}
    # Per key, revisions stay in order: sort by (delayed time of the key's first record).
    pairs.sort(key=lambda p: (p[1].updated_at_ms + delay[id(p[1])], p[1].revision))
    by_key: dict[str, list] = {}
    for pair in pairs:
        by_key.setdefault(pair[1].study_uid, []).append(pair)
    for key_pairs in by_key.values():
        key_pairs.sort(key=lambda p: p[1].revision)
    ordered = []
    cursor = {uid: 0 for uid in by_key}
    for pair in pairs:  # re-emit each key's pairs in revision order at the same slots
        uid = pair[1].study_uid
        ordered.append(by_key[uid][cursor[uid]])
        cursor[uid] += 1
    aggregator, values = run(ordered, KpiConfig(psi_reference_ms=7 * DAY_MS))
    assert aggregator.refused_retractions == 0
    assert set(aggregator.too_late.values()) == {0}
    assert_matches_batch(last_values(values), batch_kpis(finals(chains), 7 * DAY_MS))


def test_every_window_ends_final_and_revisions_grow() -> None:
    chains = [chain(s) for s in random_studies(random.Random(7), 300)]
    _, values = run(interleave(chains, random.Random(8)))
    seen: dict[Key, tuple[bool, int]] = {}
    for v in values:
        key = window_key(v)
        if key in seen and seen[key][0]:
            assert v.final and v.revision == seen[key][1] + 1  # a final value is never undone
        seen[key] = (v.final, v.revision)
    assert all(final for final, _ in seen.values())


def test_late_contribution_re_emits_a_final_window_with_next_revision() -> None:
    studies = random_studies(random.Random(11), 200)
    first, late = chain(studies[0]), chain(studies[1])
    rest = [chain(s) for s in studies[2:]]
    aggregator = KpiAggregator(KpiConfig(emit_interval_ms=None))
    values = []
    for old, new in time_ordered([first, *rest]):
        values += feed(aggregator, old, new)
    before = last_values(values)
    emitted_late = []
    for old, new in time_ordered([late]):
        emitted_late += feed(aggregator, old, new)
    # Revisions go out with the next emission: here when event time crosses an hour.
    emitted_late += aggregator.advance(max(c[-1].updated_at_ms for c in rest) + HOUR_MS)
    revised = [v for v in emitted_late if v.revision > 1]
    assert revised, "a late record must revise the final windows it lands in"
    for v in revised:
        key = window_key(v)
        assert v.final and before[key].final
        assert v.revision == before[key].revision + 1
    everything = values + emitted_late + aggregator.close_all()
    assert_matches_batch(last_values(everything), batch_kpis(finals([first, late, *rest])))


def test_contribution_after_the_horizon_is_counted_not_applied() -> None:
    studies = random_studies(random.Random(5), 50, span_ms=DAY_MS)
    chains = [chain(s) for s in studies]
    config = KpiConfig(late_horizon_ms=DAY_MS, emit_interval_ms=None)
    aggregator = KpiAggregator(config)
    for old, new in time_ordered(chains[1:]):
        feed(aggregator, old, new)
    aggregator.advance(max(c[-1].updated_at_ms for c in chains) + 40 * DAY_MS)
    values = []
    for old, new in time_ordered(chains[:1]):
        values += feed(aggregator, old, new)
    assert values == []
    assert aggregator.too_late["1h"] > 0 and aggregator.too_late["30d"] > 0
    assert aggregator.state_size()["hour_panes"] == 0


def test_current_values_are_throttled_in_event_time() -> None:
    chains = [chain(s) for s in random_studies(random.Random(2), 300)]
    aggregator = KpiAggregator(KpiConfig(emit_interval_ms=HOUR_MS))
    rounds = []
    for old, new in time_ordered(chains):
        out = feed(aggregator, old, new)
        if any(not v.final for v in out):
            rounds.append(new.updated_at_ms)
    assert len(rounds) > 10
    assert all(b - a >= HOUR_MS for a, b in itertools.pairwise(rounds))


def test_no_current_values_when_disabled_and_output_sorted() -> None:
    chains = [chain(s) for s in random_studies(random.Random(4), 200)]
    aggregator = KpiAggregator(KpiConfig(emit_interval_ms=None))
    for old, new in time_ordered(chains):
        out = feed(aggregator, old, new)
        assert all(v.final for v in out)
        keys = [(v.window_size, v.window_start_ms, v.kpi) for v in out]
        order = {"1h": 0, "1d": 1, "7d": 2, "30d": 3}
        assert keys == sorted(keys, key=lambda k: (order[k[0]], k[1]))


@pytest.mark.parametrize("seed", [6, 7])
def test_current_values_on_demand_whenever_called_leave_the_batch_values(seed: int) -> None:
    chains = [chain(s) for s in random_studies(random.Random(seed), 300)]
    config = KpiConfig(psi_reference_ms=REFERENCE, emit_interval_ms=HOUR_MS)
    aggregator = KpiAggregator(config, current_on_demand=True)
    calls = random.Random(seed)
    values: list[KpiValue] = []
    current: list[KpiValue] = []
    for old, new in time_ordered(chains):
        out = feed(aggregator, old, new)
        assert all(v.final for v in out)  # emit_interval_ms is ignored
        values += out
        if calls.random() < 0.05:  # the caller's pace (processing time in the worker)
            on_demand = aggregator.emit_current()
            current += [v for v in on_demand if not v.final]
            values += on_demand
    values += aggregator.close_all()
    assert len(current) > 50
    assert_matches_batch(last_values(values), batch_kpis(finals(chains), REFERENCE))
    assert aggregator.emit_current() == []  # nothing changed since close_all


def test_state_is_bounded_by_panes_not_records() -> None:
    def state_after(days: int) -> dict[str, int]:
        chains = [
            chain(s) for s in random_studies(random.Random(9), days * 30, span_ms=days * DAY_MS)
        ]
        aggregator, _ = run(time_ordered(chains), KpiConfig(emit_interval_ms=None))
        # close_all moved the watermark past every window: only recent panes remain.
        return aggregator.state_size()

    short, long = state_after(20), state_after(60)
    assert long["hour_panes"] <= short["hour_panes"] * 1.5
    assert long["day_panes"] <= short["day_panes"] * 1.5


def _pane_counts(aggregator: KpiAggregator) -> list[int]:
    # White-box: every count held in any pane (the invariant is on internal state).
    counts: list[int] = []
    for panes in (aggregator._hour_lists, aggregator._day_lists):
        counts += [c for pane in panes.values() for c in pane]
    for buckets in (aggregator._hour_buckets, aggregator._day_buckets):
        counts += [c for pane in buckets.values() for c in pane.values()]
    return counts


def _proportions_consistent(aggregator: KpiAggregator) -> bool:
    return all(
        0 <= pane[0] <= pane[1]
        for panes in (aggregator._hour_lists, aggregator._day_lists)
        for key, pane in panes.items()
        if len(pane) == 2
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30))
def test_add_then_retract_is_empty(seed: int, n: int) -> None:
    chains = [chain(s) for s in random_studies(random.Random(seed), n)]
    # A horizon longer than the data: nothing is too late to retract.
    config = KpiConfig(psi_reference_ms=REFERENCE, late_horizon_ms=60 * DAY_MS)
    aggregator = KpiAggregator(config)
    values = []
    for old, new in time_ordered(chains):
        values += feed(aggregator, old, new)
    for c in chains:
        aggregator.retract(c[-1])
    values += aggregator.close_all()
    assert aggregator.refused_retractions == 0
    assert set(_pane_counts(aggregator)) <= {0}
    # Whatever was emitted ends as an empty window: downstream keeps no stale value.
    assert all(not v.denominator for v in last_values(values).values())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30), data=st.data())
def test_counts_never_go_negative_even_for_bogus_retractions(
    seed: int, n: int, data: st.DataObject
) -> None:
    chains = [chain(s) for s in random_studies(random.Random(seed), n)]
    records = [r for c in chains for r in c]
    aggregator = KpiAggregator(KpiConfig(psi_reference_ms=REFERENCE))
    values = []
    for old, new in time_ordered(chains):
        values += feed(aggregator, old, new)
        # Interleave retractions of random records, most of them not current.
        for bogus in data.draw(st.lists(st.sampled_from(records), max_size=2)):
            aggregator.retract(bogus)
        assert min(_pane_counts(aggregator), default=0) >= 0
        assert _proportions_consistent(aggregator)
    values += aggregator.close_all()
    for v in values:
        assert v.denominator is None or v.denominator >= 0
        assert v.numerator is None or 0 <= v.numerator <= (v.denominator or 0)


def test_retracting_what_was_never_added_is_refused() -> None:
    chains = [chain(s) for s in random_studies(random.Random(12), 20)]
    aggregator = KpiAggregator()
    for c in chains:
        aggregator.retract(c[-1])
    assert aggregator.refused_retractions > 0
    assert _pane_counts(aggregator) == []


@pytest.mark.parametrize("ordered", [True, False])
def test_kpi_windows_emit_exactly_those_values_of_the_whole_catalogue(ordered: bool) -> None:
    """A driver that needs a few KPI windows (the policy simulator) gets the same values."""
    rng = random.Random(11)
    chains = [chain(s) for s in random_studies(rng, 400, span_ms=40 * DAY_MS)]
    pairs = time_ordered(chains) if ordered else interleave(chains, rng)
    config = KpiConfig(psi_reference_ms=REFERENCE, emit_interval_ms=None)
    wanted = {
        ("alert_ppv", "30d"),
        ("discordance_rate", "1d"),
        ("score_psi", "7d"),
        ("time_to_result", "1d"),
        ("inference_failure_rate", "1h"),
    }
    everything = KpiAggregator(config)
    some = KpiAggregator(config, kpi_windows=wanted)
    all_values: list[KpiValue] = []
    some_values: list[KpiValue] = []
    for old, new in pairs:
        all_values += feed(everything, old, new)
        some_values += feed(some, old, new)
    all_values += everything.close_all()
    some_values += some.close_all()
    expected = [v for v in all_values if (v.kpi, v.window_size) in wanted]
    assert {(v.kpi, v.window_size) for v in expected} == wanted
    assert any(v.revision > 1 for v in expected) or ordered
    assert some_values == expected


def test_kpi_windows_name_known_kpis_and_sizes() -> None:
    with pytest.raises(ValueError, match="unknown KPI 'ppv'"):
        KpiAggregator(kpi_windows={("ppv", "30d")})
    with pytest.raises(ValueError, match="unknown window size '2d'"):
        KpiAggregator(kpi_windows={("alert_ppv", "2d")})
    with pytest.raises(ValueError, match="alert_ppv has no 1h windows"):
        KpiAggregator(kpi_windows={("alert_ppv", "1h")})


def _one_version_per_model(studies: list, *, keep_unversioned: bool) -> list:
    """The common deployment: every model runs one version, so (site, model, version)
    and (site, model, *) hold the same leaves with data and share their values."""
    kept = []
    for study in studies:
        if study.version is None and not keep_unversioned:
            continue
        if study.version is not None:
            study.version = "1.0"
        kept.append(study)
    return kept


@pytest.mark.parametrize("keep_unversioned", [True, False])
def test_series_sharing_their_leaves_with_data_equal_the_batch(keep_unversioned: bool) -> None:
    rng = random.Random(23)
    studies = _one_version_per_model(random_studies(rng, 500), keep_unversioned=keep_unversioned)
    chains = [chain(s) for s in studies]
    for pairs in (time_ordered(chains), interleave(chains, rng)):
        _, values = run(pairs, KpiConfig(psi_reference_ms=REFERENCE, late_horizon_ms=30 * DAY_MS))
        last = last_values(values)
        assert_matches_batch(last, batch_kpis(finals(chains), REFERENCE))
        # The shared values are there for both series, equal.
        shared = [
            (key, value)
            for key, value in last.items()
            if key[5] == "1.0" and key[0] not in ("score_psi", "coverage")
        ]
        assert shared
        for key, value in shared:
            rolled = last[(*key[:5], "*", key[6])]
            # Rows without inference (no version) count only in coverage and addenda.
            same_leaves = not keep_unversioned or key[0] != "addendum_rate"
            if same_leaves:
                assert (rolled.numerator, rolled.denominator, rolled.value, rolled.p50) == (
                    value.numerator,
                    value.denominator,
                    value.value,
                    value.p50,
                )


def test_an_aggregator_stored_and_loaded_midway_goes_on_alike() -> None:
    """Its state, as JSON validated by the snapshot schema, into a new aggregator."""
    rng = random.Random(29)
    chains = [chain(s) for s in random_studies(rng, 300)]
    pairs = time_ordered(chains)
    config = KpiConfig(psi_reference_ms=REFERENCE)
    current = KpiAggregator(config)
    for old, new in pairs[: len(pairs) // 2]:
        feed(current, old, new)
    stored = AggregatorState.model_validate_json(json.dumps(current.state()))
    restored = KpiAggregator(config)
    restored.load(stored)
    assert restored.state_size() == current.state_size()
    expected: list[KpiValue] = []
    got: list[KpiValue] = []
    for old, new in pairs[len(pairs) // 2 :]:
        expected += feed(current, old, new)
        got += feed(restored, old, new)
    assert got + restored.close_all() == expected + current.close_all()
    with pytest.raises(ValueError, match="new aggregator"):
        restored.load(stored)
