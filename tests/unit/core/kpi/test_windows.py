"""Event-time window ranges: alignment, half-open boundaries, counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.units import DAY_MS, HOUR_MS
from streams.core.kpi.windows import WINDOW_SPEC_BY_NAME, WINDOW_SPECS, window_ranges

timestamps = st.integers(min_value=-(10**13), max_value=10**13)


@given(ts=timestamps, spec=st.sampled_from(WINDOW_SPECS))
def test_each_timestamp_is_in_exactly_size_over_step_windows(ts: int, spec: object) -> None:
    assert spec in WINDOW_SPECS
    size, step = WINDOW_SPEC_BY_NAME[spec.name].size_ms, spec.step_ms  # type: ignore[attr-defined]
    ranges = window_ranges(ts, size, step)
    assert len(ranges) == size // step
    for start, end in ranges:
        assert start <= ts < end
        assert end - start == size
        assert start % step == 0
    # No other aligned window contains ts: the neighbours just outside do not.
    first, last = ranges[0][0], ranges[-1][0]
    assert not first - step <= ts < first - step + size
    assert not last + step <= ts < last + step + size


@given(ts=timestamps, step=st.integers(1, 10_000), factor=st.integers(1, 40))
def test_any_size_and_step(ts: int, step: int, factor: int) -> None:
    ranges = window_ranges(ts, step * factor, step)
    assert len(ranges) == factor
    assert [r[0] for r in ranges] == sorted({r[0] for r in ranges})
    assert all(s <= ts < e for s, e in ranges)


def test_boundaries_are_half_open() -> None:
    assert window_ranges(HOUR_MS, HOUR_MS, HOUR_MS) == ((HOUR_MS, 2 * HOUR_MS),)
    assert window_ranges(HOUR_MS - 1, HOUR_MS, HOUR_MS) == ((0, HOUR_MS),)
    assert window_ranges(DAY_MS, DAY_MS, DAY_MS) == ((DAY_MS, 2 * DAY_MS),)


def test_rolling_7d_windows_of_a_day() -> None:
    ts = 10 * DAY_MS + 5
    starts = [s for s, _ in window_ranges(ts, 7 * DAY_MS, DAY_MS)]
    assert starts == [d * DAY_MS for d in range(4, 11)]


def test_negative_timestamps_stay_epoch_aligned() -> None:
    assert window_ranges(-1, HOUR_MS, HOUR_MS) == ((-HOUR_MS, 0),)


def test_named_specs() -> None:
    assert [s.name for s in WINDOW_SPECS] == ["1h", "1d", "7d", "30d"]
    assert WINDOW_SPEC_BY_NAME["30d"].ranges(0)[-1] == (0, 30 * DAY_MS)


@pytest.mark.parametrize(("size", "step"), [(0, 1), (10, 0), (10, 3), (-10, 5)])
def test_invalid_sizes_are_refused(size: int, step: int) -> None:
    with pytest.raises(ValueError, match="multiple"):
        window_ranges(0, size, step)
