"""Timing shared by the in-process benchmarks: the best rate of each measure."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

__all__ = ["Measure", "best_rates"]

Measure = tuple[str, int, Callable[[], None]]
"""A measure's name, how many items one run handles, and the run."""


def best_rates(measures: list[Measure], repeat: int) -> dict[str, int]:
    """Items per second of each measure, from its fastest of ``repeat`` runs."""
    # Round-robin, so that every measure sees the same share of a noisy shared machine.
    best = {name: float("inf") for name, _, _ in measures}
    for _ in range(repeat):
        for name, _, run in measures:
            gc.collect()
            began = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - began)
    return {name: round(count / best[name]) for name, count, _ in measures}
