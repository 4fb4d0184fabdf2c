"""Which offsets of a partition the worker's state already contains.

A stage skips a message as "already applied" only when its *own* offset is recorded
as applied, never because a later one was: Kafka delivery through Faust can leave
gaps (after some rebalances a partition is delivered from beyond its committed offset,
and the missing messages come later, when the partition is re-read), so a high-water
mark records what was applied only when delivery has none. :class:`AppliedOffsets`
keeps the applied offsets of one partition as sorted, disjoint ``[start, end)``
ranges: one range while delivery is in order, one more per gap not yet filled. It is
persisted with the state it describes, in the same partition of the same changelog
and after that state, so a restart never finds an offset recorded whose effect is
missing; re-reading a partition from any earlier offset is then always safe.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["AppliedOffsets"]

log = logging.getLogger("imgov.worker")


class AppliedOffsets:
    """The applied offsets of one partition as sorted, disjoint ``[start, end)`` ranges.

    Args:
        source: names the partition in log messages (``topic[partition]``).
        ranges: the ranges of an earlier record (:meth:`from_bytes`).
    """

    __slots__ = ("_ends", "_source", "_starts")

    def __init__(self, source: str, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._source = source
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(ranges):
            if end <= start:
                raise ValueError(f"empty offset range [{start}, {end}) for {source}")
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AppliedOffsets) and self.ranges == other.ranges

    def __repr__(self) -> str:
        return f"AppliedOffsets({self._source!r}, {self.ranges!r})"

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The applied ``[start, end)`` ranges, in order."""
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Offsets not applied between applied ones: ``[start, end)`` each."""
        return list(zip(self._ends, self._starts[1:], strict=False))

    @property
    def next_offset(self) -> int | None:
        """One past the highest applied offset (None: nothing applied yet)."""
        return self._ends[-1] if self._ends else None

    def missing_below(self, offset: int, floor: int | None = None) -> bool:
        """Whether an offset below ``offset`` is not applied: one between the first
        applied and ``offset``, or, given ``floor``, one from ``floor`` on.

        A message that vouches for everything before it in its partition (a watermark
        record, a close marker) may only take effect when this is False. ``floor`` is
        the partition's committed offset: everything below it was applied by the time
        it was committed, and everything from it on is delivered again, so a first
        delivery beyond it is a gap too (without it, the first offset applied is where
        the partition starts).
        """
        if floor is not None and offset > floor and (not self._ends or self._starts[0] > floor):
            return True
        return bool(self._ends) and offset > self._ends[0]

    def add(self, offset: int) -> None:
        """Records ``offset`` as applied; logs a gap it opens or fills."""
        i = bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self._ends[i]:
            return  # already recorded
        joins_left = i >= 0 and self._ends[i] == offset
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == offset + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends.pop(i + 1)
            del self._starts[i + 1]
            log.warning("%s: gap in delivery filled up to offset %d", self._source, offset)
        elif joins_left:
            self._ends[i] = offset + 1
        elif joins_right:
            self._starts[i + 1] = offset
        else:
            if i >= 0:  # delivered beyond offsets never delivered
                log.warning(
                    "%s: gap in delivery, offsets %d-%d not delivered (yet) before %d;"
                    " they are applied when they arrive",
                    self._source,
                    self._ends[i],
                    offset - 1,
                    offset,
                )
            self._starts.insert(i + 1, offset)
            self._ends.insert(i + 1, offset + 1)

    def to_bytes(self) -> bytes:
        """The record kept in state: a JSON list of ``[start, end]`` pairs."""
        return json.dumps(self.ranges, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, source: str, raw: bytes) -> AppliedOffsets:
        """Reads a record written by :meth:`to_bytes`.

        Raises:
            ValueError: the record is not a list of ``[start, end]`` integer pairs.
        """
        try:
            pairs = json.loads(raw)
            ranges = [(int(start), int(end)) for start, end in pairs]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unreadable applied-offsets record of {source}: {exc}") from exc
        return cls(source, ranges)
