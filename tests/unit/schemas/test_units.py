"""The time units and their formatting (schemas.units), shared by every layer."""

from __future__ import annotations

import math

import pytest

from schemas.units import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    MISSING,
    SECOND_MS,
    format_day,
    format_duration,
    format_minute,
    format_percent,
    format_utc,
)

T = 1_767_225_600_000 + 13 * HOUR_MS + 5 * MINUTE_MS  # 2026-01-01 13:05 UTC


def test_units_nest() -> None:
    assert (SECOND_MS, MINUTE_MS, HOUR_MS, DAY_MS) == (1_000, 60_000, 3_600_000, 86_400_000)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 s"),
        (45 * SECOND_MS, "45 s"),
        (MINUTE_MS, "1.0 min"),
        (12.5 * MINUTE_MS, "12.5 min"),
        (2 * HOUR_MS - 1, "120.0 min"),
        (2 * HOUR_MS, "2.0 h"),
        (47 * HOUR_MS, "47.0 h"),
        (14 * DAY_MS, "14.0 days"),
        (1_500 * DAY_MS, "1,500.0 days"),
        (None, MISSING),
        (math.nan, MISSING),
    ],
)
def test_durations_read_in_the_unit_a_person_would_use(ms: float | None, text: str) -> None:
    assert format_duration(ms) == text


def test_percentages_and_instants() -> None:
    assert format_percent(0.1234) == "12.3%"
    assert format_percent(0.5, digits=0) == "50%"
    assert format_percent(None) == format_percent(math.nan) == MISSING
    assert format_day(T) == "2026-01-01"
    assert format_minute(T) == "2026-01-01 13:05"
    assert format_utc(T) == "2026-01-01T13:05Z"
    assert format_day(None) == format_minute(None) == format_utc(None) == MISSING
