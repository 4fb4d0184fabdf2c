"""WatermarkTracker: per-source watermarks combined by their minimum (DESIGN §5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.watermarks import WatermarkTracker


def test_the_minimum_over_sources_less_the_lateness() -> None:
    tracker = WatermarkTracker(10, ["a", "b"])
    tracker.observe("a", 1_000)
    assert tracker.watermark_ms is None  # b has not spoken: it may hold the oldest event
    tracker.observe("b", 400)
    assert tracker.watermark_ms == 390
    tracker.observe("a", 5_000)  # a running ahead does not move it
    assert tracker.watermark_ms == 390
    tracker.observe("b", 300)  # out of order within b: a source's max counts
    assert tracker.watermark_ms == 390
    tracker.observe("b", 2_000)
    assert tracker.watermark_ms == 1_990
    assert tracker.sources == {"a": 4_990, "b": 1_990}


def test_an_idle_source_stops_holding_back_until_it_speaks_again() -> None:
    tracker = WatermarkTracker(0, ["a", "b", "c"])
    tracker.observe("a", 100)
    tracker.observe("b", 500)
    tracker.mark_idle("c")  # never delivered, caught up: an empty partition
    assert tracker.watermark_ms == 100
    tracker.mark_idle("a")
    assert tracker.watermark_ms == 500 and tracker.is_idle("a")
    tracker.observe("a", 200)  # active again, behind: the watermark does not move back
    assert not tracker.is_idle("a")
    assert tracker.watermark_ms == 500
    tracker.observe("a", 900)
    tracker.observe("b", 800)
    assert tracker.watermark_ms == 800


def test_with_every_source_idle_the_greatest_watermark_counts() -> None:
    tracker = WatermarkTracker(5, ["a", "b"])
    tracker.observe("a", 100)
    tracker.observe("b", 50)
    tracker.mark_idle("a")
    tracker.mark_idle("b")
    assert tracker.watermark_ms == 95
    assert WatermarkTracker(5, ["x"]).watermark_ms is None
    idle = WatermarkTracker(5, ["x"])
    idle.mark_idle("x")
    assert idle.watermark_ms is None  # nothing seen: no time at all


def test_unregistered_sources_join_when_first_seen_and_can_be_forgotten() -> None:
    tracker = WatermarkTracker()
    tracker.observe("a", 10)
    assert tracker.watermark_ms == 10
    tracker.register("b")
    tracker.observe("a", 20)
    assert tracker.watermark_ms == 10  # b registered, silent: holds it
    tracker.forget("b")
    assert tracker.watermark_ms == 20


def test_negative_lateness_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed_lateness_ms"):
        WatermarkTracker(-1)


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 10_000), st.booleans()), max_size=60)
)
def test_monotonic_bounded_by_what_was_seen_and_the_minimum_without_idleness(
    steps: list[tuple[str, int, bool]],
) -> None:
    tracker = WatermarkTracker(7, "abc")
    seen: dict[str, int] = {}
    ever_idle = False
    last: int | None = None
    for source, time_ms, idle in steps:
        if idle:
            tracker.mark_idle(source)
            ever_idle = True
        else:
            tracker.observe(source, time_ms)
            seen[source] = max(seen.get(source, time_ms), time_ms)
        wm = tracker.watermark_ms
        if last is not None:
            assert wm is not None and wm >= last  # never moves back
        last = wm
        if wm is not None:
            assert wm <= max(seen.values()) - 7  # never ahead of everything seen
        if not ever_idle:
            expected = min(seen.values()) - 7 if len(seen) == 3 else None
            assert wm == expected  # plain minimum while every source is active
