"""Delivery: when each event reaches its topic, duplicated, late, or not at all.

Every event gets a delivery time (event time plus jitter, or plus hours for a late
batch); a share is delivered a second time with the same ``event_id`` (a producer
retry), a share may be lost. The output order is the delivery order, so events of a
study arrive out of event-time order whenever jitter or lateness swaps them.

Delivery draws come from their own generator per site and day: changing a delivery
knob never changes what the clinic generated.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import Event, EventType
from schemas.units import HOUR_MS
from streams.simulate.clinic import SimulatedStudy
from streams.simulate.config import SimulationConfig
from streams.simulate.sampling import STREAM_DELIVERY, lognormal_ms, substream

__all__ = [
    "Delivery",
    "DeliveryStats",
    "delivery_random",
    "order_deliveries",
    "plan_deliveries",
]


class Delivery(NamedTuple):
    """One message to produce: the event and when it is delivered (not part of the event)."""

    delivered_at_ms: int
    event: Event
    duplicate: bool = False
    late: bool = False


@dataclass(slots=True)
class DeliveryStats:
    """Counts for the end-of-run summary."""

    studies: int = 0
    generated: Counter[EventType] = field(default_factory=Counter)
    """Distinct events generated, by type."""
    delivered: Counter[EventType] = field(default_factory=Counter)
    """Messages delivered (duplicates included), by type."""
    duplicates: int = 0
    dropped: int = 0
    late: int = 0
    out_of_order: int = 0
    """Deliveries older (in event time) than an earlier delivery of the same study."""

    @property
    def total_delivered(self) -> int:
        return sum(self.delivered.values())


def delivery_random(config: SimulationConfig, site_index: int, day: int) -> random.Random:
    """The delivery generator of one site and day (the studies of a day share it)."""
    return substream(config.seed, site_index, day, 0, STREAM_DELIVERY)


def plan_deliveries(
    study: SimulatedStudy, config: SimulationConfig, rng: random.Random, stats: DeliveryStats
) -> list[Delivery]:
    """The deliveries of one study's events (unordered), counting into ``stats``.

    ``rng`` is the ``delivery_random`` of the study's site and day, used in study order.
    """
    knobs = config.delivery
    stats.studies += 1
    planned: list[Delivery] = []
    for event in study.events:
        stats.generated[event.event_type] += 1
        if knobs.drop_rate and rng.random() < knobs.drop_rate:
            stats.dropped += 1
            continue
        late = rng.random() < knobs.late_rate
        if late:
            delay = lognormal_ms(rng, knobs.late_hours, HOUR_MS)
            stats.late += 1
        else:
            delay = lognormal_ms(rng, knobs.jitter_seconds, 1_000)
        delivered_at = event.occurred_at_ms + delay
        planned.append(Delivery(delivered_at, event, late=late))
        if rng.random() < knobs.duplicate_rate:
            again = delivered_at + lognormal_ms(rng, knobs.duplicate_delay_seconds, 1_000)
            planned.append(Delivery(again, event, duplicate=True, late=late))
            stats.duplicates += 1
    return planned


def order_deliveries(planned: Iterable[Delivery], stats: DeliveryStats) -> list[Delivery]:
    """``planned`` in delivery order, counting deliveries and out-of-order arrivals.

    Ties on the delivery time keep the input (generation) order, so the order is total
    and the output deterministic.
    """
    ordered = sorted(planned, key=_delivery_time)  # stable: ties keep generation order
    newest_by_study: dict[tuple[str, str], int] = {}
    for delivery in ordered:
        event = delivery.event
        stats.delivered[event.event_type] += 1
        key = (event.site_id, event.study_uid)
        newest = newest_by_study.get(key)
        if newest is not None and event.occurred_at_ms < newest:
            stats.out_of_order += 1
        else:
            newest_by_study[key] = event.occurred_at_ms
    return ordered


def _delivery_time(delivery: Delivery) -> int:
    return delivery.delivered_at_ms
