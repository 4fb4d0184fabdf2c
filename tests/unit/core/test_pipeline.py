"""GovernanceProcessor: how the input is cut into batches does not change final KPIs."""

from __future__ import annotations

from schemas.events import Event
from schemas.records import KpiValue
from streams.core.kpi.config import KpiConfig
from streams.core.lineage.config import LineageConfig
from streams.core.pipeline import GovernanceProcessor
from streams.governance import DEMO_SETTINGS, load_settings
from streams.simulate.config import SimulationConfig
from streams.simulate.run import run_simulation
from tests.unit.core.kpi.test_batch import window_key


def _final_kpis(events: list[Event], chunk: int) -> dict[tuple[object, ...], KpiValue]:
    processor = GovernanceProcessor(
        LineageConfig(demo=True, eligibility=load_settings(DEMO_SETTINGS).eligibility),
        KpiConfig(emit_interval_ms=None),
    )
    values: list[KpiValue] = []
    for start in range(0, len(events), chunk):
        values.extend(processor.process(events[start : start + chunk]).kpis)
    values.extend(processor.close().kpis)
    latest: dict[tuple[object, ...], KpiValue] = {}
    for v in values:
        key = window_key(v)
        if v.final and (key not in latest or v.revision >= latest[key].revision):
            latest[key] = v
    return latest


def _strip(
    values: dict[tuple[object, ...], KpiValue],
) -> dict[tuple[object, ...], tuple[object, ...]]:
    return {k: (v.numerator, v.denominator, v.value, v.p50, v.p90) for k, v in values.items()}


def test_final_values_do_not_depend_on_the_batch_size() -> None:
    # Final lineage does not depend on how the input is cut, so neither may the
    # latest final value of any window: a whole-input batch equals one event at a time.
    events = [
        d.event
        for d in run_simulation(
            SimulationConfig(days=4, sites=1, studies_per_day=30, seed=11)
        ).deliveries
    ]
    one = _final_kpis(events, 1)
    whole = _final_kpis(events, len(events))
    assert _strip(one) == _strip(whole)
