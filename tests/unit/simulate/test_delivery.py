"""Delivery order, duplicates, lateness and losses."""

from __future__ import annotations

import itertools
from collections import defaultdict

from schemas.events import Event, InferenceEvent, ReportEvent
from schemas.units import HOUR_MS
from streams.simulate.run import SimulationRun, run_simulation
from tests.unit.simulate.conftest import SMALL


def test_output_is_in_delivery_order(large_run: SimulationRun) -> None:
    times = [d.delivered_at_ms for d in large_run.deliveries]
    assert times == sorted(times)
    assert all(d.delivered_at_ms > d.event.occurred_at_ms for d in large_run.deliveries)


def test_duplicates_share_the_event_id_and_content(large_run: SimulationRun) -> None:
    copies: dict[str, list[Event]] = defaultdict(list)
    for delivery in large_run.deliveries:
        copies[delivery.event.event_id].append(delivery.event)
    repeated = {k: v for k, v in copies.items() if len(v) > 1}
    assert len(repeated) == large_run.stats.duplicates > 100
    for events in repeated.values():
        assert len(events) == 2 and events[0] == events[1]
    assert sum(d.duplicate for d in large_run.deliveries) == large_run.stats.duplicates


def test_delivery_is_not_in_event_time_order(large_run: SimulationRun) -> None:
    occurred = [d.event.occurred_at_ms for d in large_run.deliveries]
    inversions = sum(a > b for a, b in itertools.pairwise(occurred))
    assert inversions > 1_000
    assert large_run.stats.out_of_order > 500


def test_some_reports_arrive_before_the_inference_of_their_study(large_run: SimulationRun) -> None:
    first_inference: dict[str, int] = {}
    first_report: dict[str, int] = {}
    for position, delivery in enumerate(large_run.deliveries):
        event = delivery.event
        if isinstance(event, InferenceEvent):
            first_inference.setdefault(event.study_uid, position)
        elif isinstance(event, ReportEvent):
            first_report.setdefault(event.study_uid, position)
    early = [uid for uid, at in first_report.items() if at < first_inference.get(uid, -1)]
    assert len(early) > 10


def test_late_deliveries_come_hours_to_days_later(large_run: SimulationRun) -> None:
    late = [d for d in large_run.deliveries if d.late and not d.duplicate]
    assert len(late) == large_run.stats.late
    delays = sorted(d.delivered_at_ms - d.event.occurred_at_ms for d in late)
    assert delays[len(delays) // 2] > HOUR_MS
    assert delays[-1] > 24 * HOUR_MS
    prompt = [d for d in large_run.deliveries if not d.late and not d.duplicate]
    assert max(d.delivered_at_ms - d.event.occurred_at_ms for d in prompt) <= 600_000


def test_dropped_events_are_counted_and_missing() -> None:
    lossy = SMALL.model_copy(
        update={"delivery": SMALL.delivery.model_copy(update={"drop_rate": 0.1})}
    )
    clean, lost = run_simulation(SMALL), run_simulation(lossy)
    assert lost.stats.dropped > 10
    assert lost.stats.generated == clean.stats.generated
    assert lost.truths == clean.truths
    kept = {d.event.event_id for d in lost.deliveries}
    everything = {d.event.event_id for d in clean.deliveries}
    assert len(everything - kept) == lost.stats.dropped
