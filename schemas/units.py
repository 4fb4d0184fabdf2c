"""Time units of the event contracts (integer milliseconds) and how people read them.

Every timestamp and duration in imgov is an integer count of milliseconds (UTC epoch for
instants). The constants and formatters here are the only copies: the core, the sinks,
the simulator, the report and the CLI import them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "MISSING",
    "SECOND_MS",
    "format_day",
    "format_duration",
    "format_minute",
    "format_percent",
    "format_utc",
    "utc",
]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

MISSING = "n/a"
"""What a formatter prints for a value that is absent (None or NaN)."""


def utc(ms: int | float) -> datetime:
    """Returns the aware UTC datetime of epoch milliseconds ``ms``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def format_day(ms: int | float | None) -> str:
    """Returns the UTC date of ``ms`` as ``YYYY-MM-DD`` (``MISSING`` for None)."""
    return MISSING if ms is None else utc(ms).strftime("%Y-%m-%d")


def format_minute(ms: int | float | None) -> str:
    """Returns ``ms`` as ``YYYY-MM-DD HH:MM`` UTC (``MISSING`` for None)."""
    return MISSING if ms is None else utc(ms).strftime("%Y-%m-%d %H:%M")


def format_utc(ms: int | float | None) -> str:
    """Returns ``ms`` as ISO 8601 to the minute, ``YYYY-MM-DDTHH:MMZ`` (for messages)."""
    return MISSING if ms is None else utc(ms).strftime("%Y-%m-%dT%H:%MZ")


def format_duration(ms: int | float | None) -> str:
    """Returns a duration in the unit a person would use.

    Seconds below a minute, minutes below two hours, hours below two days, then days:
    ``45 s``, ``12.5 min``, ``3.0 h``, ``14.0 days``. ``MISSING`` for None or NaN.
    """
    if ms is None or math.isnan(ms):
        return MISSING
    if abs(ms) < MINUTE_MS:
        return f"{ms / SECOND_MS:.0f} s"
    if abs(ms) < 2 * HOUR_MS:
        return f"{ms / MINUTE_MS:.1f} min"
    if abs(ms) < 2 * DAY_MS:
        return f"{ms / HOUR_MS:.1f} h"
    return f"{ms / DAY_MS:,.1f} days"


def format_percent(value: float | None, digits: int = 1) -> str:
    """Returns a proportion (0.123) as a percentage (``12.3%``); ``MISSING`` if absent."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{value * 100:.{digits}f}%"
