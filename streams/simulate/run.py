"""One simulation run, end to end in memory: clinic -> deliveries in delivery order."""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from streams.simulate.clinic import ClinicSimulator
from streams.simulate.config import SimulationConfig
from streams.simulate.delivery import (
    Delivery,
    DeliveryStats,
    delivery_random,
    order_deliveries,
    plan_deliveries,
)
from streams.simulate.truth import StudyTruth

__all__ = ["SimulationRun", "run_simulation"]


@dataclass(frozen=True, slots=True)
class SimulationRun:
    """Everything a run produced."""

    deliveries: tuple[Delivery, ...]
    """In delivery order: the order of the output file or of the produced messages."""
    truths: tuple[StudyTruth, ...]
    """One per study, in generation order (day, site, time of day)."""
    stats: DeliveryStats


def run_simulation(config: SimulationConfig) -> SimulationRun:
    """Generates the clinic of ``config`` and orders its deliveries. Pure and deterministic."""
    stats = DeliveryStats()
    planned: list[Delivery] = []
    truths: list[StudyTruth] = []
    rngs: dict[tuple[int, int], random.Random] = {}
    with _cyclic_gc_paused():
        for study in ClinicSimulator(config).studies():
            truths.append(study.truth)
            site_day = (study.site_index, study.day)
            rng = rngs.get(site_day)
            if rng is None:
                rngs.clear()  # studies come grouped by site and day
                rng = rngs[site_day] = delivery_random(config, *site_day)
            planned.extend(plan_deliveries(study, config, rng, stats))
        ordered = order_deliveries(planned, stats)
    return SimulationRun(tuple(ordered), tuple(truths), stats)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector while the run builds its objects.

    A run keeps every event alive until it is ordered; with the collector on, each full
    collection re-traverses all the events built so far, which made a 90-day run a third
    slower. The generator makes hardly any reference cycles, and those are collected
    once the collector resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
