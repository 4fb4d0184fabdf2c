"""Event-time windows as pure integer arithmetic (DESIGN §5).

Every window is half-open, ``[start_ms, end_ms)``, in integer epoch milliseconds UTC,
and aligned to the UNIX epoch: a window starts at a multiple of its step. Tumbling
windows have ``step == size``; hopping (rolling) windows advance by a smaller step, so
a timestamp falls in exactly ``size // step`` of them.

The KPI windows are tumbling 1 h and 1 d, and rolling 7 d and 30 d with a 1 d step.
Rolling windows are computed from per-day panes (see ``streams.core.kpi.aggregator``), so
a window of any length costs the same per event.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.units import DAY_MS, HOUR_MS

__all__ = [
    "WINDOW_SPECS",
    "WINDOW_SPEC_BY_NAME",
    "WindowSpec",
    "window_ranges",
]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A window size by name, e.g. ``"30d"``: ``size_ms`` long, a new one every ``step_ms``.

    Attributes:
        name: the ``window_size`` carried by KPI values and breaches.
        size_ms: the window length.
        step_ms: the distance between window starts (equal to ``size_ms`` when tumbling).
    """

    name: str
    size_ms: int
    step_ms: int

    def ranges(self, ts_ms: int) -> tuple[tuple[int, int], ...]:
        """Returns the windows of this size that contain ``ts_ms`` (see ``window_ranges``)."""
        return window_ranges(ts_ms, self.size_ms, self.step_ms)


WINDOW_SPECS: tuple[WindowSpec, ...] = (
    WindowSpec("1h", HOUR_MS, HOUR_MS),
    WindowSpec("1d", DAY_MS, DAY_MS),
    WindowSpec("7d", 7 * DAY_MS, DAY_MS),
    WindowSpec("30d", 30 * DAY_MS, DAY_MS),
)
"""The KPI windows, shortest first."""

WINDOW_SPEC_BY_NAME: dict[str, WindowSpec] = {spec.name: spec for spec in WINDOW_SPECS}


def window_ranges(ts_ms: int, size_ms: int, step_ms: int) -> tuple[tuple[int, int], ...]:
    """Returns every window ``[start, end)`` of a size and step that contains a timestamp.

    Windows start at multiples of ``step_ms`` counted from the epoch (negative
    timestamps included: floor division keeps the alignment).

    Args:
        ts_ms: the event time, epoch milliseconds UTC.
        size_ms: the window length; a positive multiple of ``step_ms``.
        step_ms: the hop between window starts; ``size_ms`` for tumbling windows.

    Returns:
        ``size_ms // step_ms`` ranges ``(start_ms, end_ms)``, earliest start first.

    Raises:
        ValueError: if the size or step is not positive or the size is not a multiple
            of the step.
    """
    if step_ms <= 0 or size_ms <= 0 or size_ms % step_ms:
        raise ValueError(
            f"window size {size_ms} ms must be a positive multiple of step {step_ms} ms"
        )
    last_start = ts_ms - ts_ms % step_ms
    first_start = last_start - size_ms + step_ms
    return tuple((s, s + size_ms) for s in range(first_start, last_start + 1, step_ms))
