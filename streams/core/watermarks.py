"""Event-time watermarks per source, combined by their minimum (DESIGN §5, STYLE rule 3).

A *source* is one ordered input: a Kafka topic-partition in the live worker, a file in
an offline replay, an upstream partition for the KPI stage. Each source's watermark is
the greatest event time seen there minus ``allowed_lateness_ms``: the promise that
later input *of that source* is not older. The combined watermark is the minimum over
the sources that are not idle, as in Flink, because input read from several sources
is never in one event-time order: one partition read days ahead of the others during a
backlog must not make the others' contributions late.

Rules, and why:

- A *registered* source that has not delivered anything yet holds the watermark back
  (its first event may be the oldest of all); a source first seen later joins the
  minimum from then on.
- An *idle* source (one the driver knows has nothing to deliver: a finished file, a
  caught-up partition) is left out of the minimum, so an empty partition does not stall
  everything. It becomes active again with its next event.
- With every source idle (all caught up, every file read) nothing holds time back:
  the combined watermark is the greatest source watermark, so the end of input is
  the same whichever source happened to finish last.
- The combined watermark never moves back.

``WatermarkTracker`` is pure (no clock): the driver decides when a source is idle.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

__all__ = ["WatermarkTracker", "combine_watermarks"]


def combine_watermarks(marks: Iterable[tuple[int | None, bool]]) -> int | None:
    """Returns the combined value of ``(watermark or None, idle)`` marks; see the rules.

    The minimum over the active marks; None while an active one has no watermark yet
    (it holds everything back) or when there is none at all; with every mark idle, the
    greatest watermark seen.
    """
    low: int | None = None
    high: int | None = None
    for mark, idle in marks:
        if mark is not None and (high is None or mark > high):
            high = mark
        if idle:
            continue
        if mark is None:
            return None  # a source that has not spoken yet holds it back
        if low is None or mark < low:
            low = mark
    return low if low is not None else high


class WatermarkTracker:
    """Per-source watermarks and their minimum; see the module docstring.

    Args:
        allowed_lateness_ms: a source's watermark is its greatest event time minus this.
        sources: sources known before any input; each holds the watermark until it
            delivers an event or is marked idle.
    """

    __slots__ = ("_idle", "_lateness", "_max", "_watermark")

    def __init__(self, allowed_lateness_ms: int = 0, sources: Iterable[Hashable] = ()) -> None:
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, not {allowed_lateness_ms}")
        self._lateness = allowed_lateness_ms
        self._max: dict[Hashable, int | None] = dict.fromkeys(sources)
        self._idle: set[Hashable] = set()
        self._watermark: int | None = None

    def state(self) -> dict[str, object]:
        """The tracker as plain data: lateness, each source's greatest event time, idle ones."""
        return {
            "allowed_lateness_ms": self._lateness,
            "sources": list(self._max.items()),
            "idle": list(self._idle),
            "watermark_ms": self._watermark,
        }

    @classmethod
    def restored(
        cls,
        allowed_lateness_ms: int,
        sources: Iterable[tuple[Hashable, int | None]],
        idle: Iterable[Hashable],
        watermark_ms: int | None,
    ) -> WatermarkTracker:
        """A tracker in a stored state (what ``state`` returned).

        Raises:
            ValueError: a negative lateness, or an idle source that is not a source.
        """
        tracker = cls(allowed_lateness_ms)
        tracker._max = dict(sources)
        tracker._idle = set(idle)
        if not tracker._idle <= tracker._max.keys():
            raise ValueError("an idle source must be one of the sources")
        tracker._watermark = watermark_ms
        return tracker

    def register(self, source: Hashable) -> None:
        """Declares a source that will deliver input; it holds the watermark until then."""
        self._max.setdefault(source, None)

    def observe(self, source: Hashable, event_time_ms: int) -> None:
        """Records one event time of ``source`` (which becomes active if it was idle)."""
        top = self._max.get(source)
        if top is None or event_time_ms > top:
            self._max[source] = event_time_ms
        self._idle.discard(source)

    def mark_idle(self, source: Hashable) -> None:
        """Leaves ``source`` out of the minimum until its next event."""
        self._max.setdefault(source, None)
        self._idle.add(source)

    def is_idle(self, source: Hashable) -> bool:
        """Whether ``source`` is currently left out of the minimum."""
        return source in self._idle

    def forget(self, source: Hashable) -> None:
        """Removes a source entirely (a partition no longer assigned here)."""
        self._max.pop(source, None)
        self._idle.discard(source)

    @property
    def sources(self) -> Mapping[Hashable, int | None]:
        """Each known source's watermark (None before its first event)."""
        lateness = self._lateness
        return {s: None if top is None else top - lateness for s, top in self._max.items()}

    @property
    def watermark_ms(self) -> int | None:
        """The combined watermark, None until every active source has delivered.

        Monotonic: the minimum over active sources can drop when an idle source becomes
        active again behind the others; the combined watermark then stays where it was.
        """
        idle = self._idle
        top = combine_watermarks((top, source in idle) for source, top in self._max.items())
        if top is not None:
            candidate = top - self._lateness
            if self._watermark is None or candidate > self._watermark:
                self._watermark = candidate
        return self._watermark

    def __repr__(self) -> str:
        return f"WatermarkTracker(watermark_ms={self.watermark_ms}, sources={len(self._max)})"
