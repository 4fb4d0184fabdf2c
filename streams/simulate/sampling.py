"""Small deterministic sampling helpers shared by the generator modules.

Everything draws from an explicit ``random.Random``; nothing touches the global random
state or the clock.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Generic, TypeVar

from streams.simulate.config import LogNormal

__all__ = ["WeightedChoice", "lognormal_ms", "substream", "uuid4_from"]

T = TypeVar("T")

_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48) & ((1 << 128) - 1)
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)

# Sub-stream kinds: each study gets its own generator per kind, so changing one knob
# (a drift, a delivery rate) leaves every unrelated draw exactly as it was.
STREAM_DAY = 0
STREAM_STUDY = 1
STREAM_DELIVERY = 2


def substream(seed: int, site: int, day: int, study: int, kind: int) -> random.Random:
    """A generator for one (site, day, study, kind), independent of every other one.

    The integer seed is a mixed-radix number, unique while site < 1000, day < 100000,
    study < 10**6 and kind < 4 (the config bounds guarantee it).
    """
    return random.Random((((seed * 1_000 + site) * 100_000 + day) * 1_000_000 + study) * 4 + kind)


def uuid4_from(rng: random.Random) -> str:
    """A random (version 4) UUID string drawn from ``rng``.

    Equal to ``str(uuid.UUID(int=rng.getrandbits(128), version=4))``, at a fraction of
    the cost.
    """
    h = f"{(rng.getrandbits(128) & _VERSION_MASK) | _VERSION_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def lognormal_ms(rng: random.Random, distribution: LogNormal, unit_ms: int) -> int:
    """A lognormal duration capped at the distribution's maximum, in milliseconds."""
    value = rng.lognormvariate(distribution.mu, distribution.sigma)
    return int(min(value, distribution.maximum) * unit_ms)


class WeightedChoice(Generic[T]):
    """Draws one of ``items`` with the given weights (cumulative table, one bisect)."""

    __slots__ = ("_cumulative", "_items", "_total")

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("need one weight per item and at least one item")
        self._items = tuple(items)
        self._cumulative = tuple(accumulate(weights))
        self._total = self._cumulative[-1]

    def draw(self, rng: random.Random) -> T:
        index = bisect_right(self._cumulative, rng.random() * self._total)
        return self._items[min(index, len(self._items) - 1)]
