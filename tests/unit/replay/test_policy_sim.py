"""The policy simulator end to end: simulated runs through the core, tallied.

The runs are short (weeks, not a year) and the policy is a test policy with a 10-day
baseline, so a 15-point specificity drop from day 12 must be found by the sustained-
discordance rule within the horizon.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from schemas.units import DAY_MS
from streams.core.kpi.breach import BreachPolicy
from streams.governance import ConfigurationError, load_breach_policy
from streams.replay.policy_sim import (
    DEFAULT_ALGORITHM,
    PolicySimulation,
    PolicySimulationError,
    build_policy_processor,
    policy_kpi_windows,
    replay_breaches,
    simulate_policies,
    simulator_settings,
)
from streams.replay.policy_tally import ALL_RULES
from streams.simulate.config import DriftKind
from streams.simulate.run import run_simulation

POLICY = """
version = 1

[[rules]]
id = "sustained-discordance"
kpi = "discordance_rate"
window = "1d"
kind = "baseline"
baseline_days = 10
min_baseline_denominator = 100
min_denominator = 1
severity = "CRITICAL"
open_after = 7
resolve_after = 7

[[rules]]
id = "alert-ppv-low"
kpi = "alert_ppv"
window = "30d"
comparator = "<"
threshold = 0.30
min_denominator = 20
severity = "WARNING"

[[rules]]
id = "score-drift-moderate"
kpi = "score_psi"
window = "7d"
comparator = ">="
threshold = 0.10
min_denominator = 100
severity = "WARNING"
open_after = 2
resolve_after = 3

[[rules]]
id = "time-to-result-slow"
kpi = "time_to_result"
window = "1d"
statistic = "p90"
comparator = ">"
threshold = 300000
min_denominator = 20
severity = "WARNING"
"""


def small(**changes: Any) -> PolicySimulation:
    simulation = PolicySimulation(
        policy=BreachPolicy.from_toml(POLICY),
        settings=simulator_settings(),
        shifts=(15.0,),
        seeds=2,
        base_seed=3,
        stable_days=20,
        shift_start_day=12,
        horizon_days=25,
    )
    return replace(simulation, **changes)


def test_a_large_specificity_drop_is_found_by_the_sustained_discordance_rule() -> None:
    done = []
    [report] = simulate_policies([small()], jobs=1, on_run=done.append)
    assert len(done) == len(report.runs) == 4
    assert [(run.shift, run.seed, run.days) for run in report.runs] == [
        (None, 3, 20),
        (None, 4, 20),
        (15.0, 3, 37),
        (15.0, 4, 37),
    ]
    assert all(run.studies > 0 and run.events > run.studies for run in report.runs)
    assert report.series_years == pytest.approx(40 / 365)
    assert [row.rule_id for row in report.false_alarms] == [
        "sustained-discordance",
        "alert-ppv-low",
        "score-drift-moderate",
        "time-to-result-slow",
        ALL_RULES,
    ]
    [per_rule] = report.delays
    sustained = per_rule[0]
    assert (sustained.rule_id, sustained.shift_points) == ("sustained-discordance", 15.0)
    assert sustained.detected == 2
    # 7 consecutive daily windows after the shift at the earliest, within the horizon.
    assert all(d is not None and 7 <= d <= 25 for d in sustained.delays)
    assert sustained.median is not None and sustained.p90 is not None
    first_of_any = per_rule[-1]
    assert first_of_any.rule_id == ALL_RULES
    assert all(
        a is not None and s is not None and a <= s
        for a, s in zip(first_of_any.delays, sustained.delays, strict=True)
    )


def test_the_policy_windows_alone_give_the_breaches_of_every_kpi() -> None:
    simulation = small()
    config = simulation.clinic(15.0, 3)
    events = [d.event for d in run_simulation(config).deliveries]
    fast, fast_letters = replay_breaches(build_policy_processor(simulation), events, config.days)
    full, full_letters = replay_breaches(
        build_policy_processor(simulation, every_kpi=True), events, config.days
    )
    assert fast == full and fast_letters == full_letters
    assert {b.rule_id for b in fast} >= {"sustained-discordance"}


def test_runs_of_a_seed_share_the_days_before_the_shift() -> None:
    simulation = small()
    shift_start = simulation.clinic(None, 3).start_ms + 12 * DAY_MS

    def before_shift(shift: float | None) -> list[str]:
        run = run_simulation(simulation.clinic(shift, 3))
        events = [d.event for d in run.deliveries if d.event.occurred_at_ms < shift_start]
        return sorted(event.model_dump_json() for event in events)

    stable = before_shift(None)
    assert len(stable) > 12 * 50
    assert before_shift(15.0) == stable


def test_the_clinic_is_one_site_and_the_exams_of_the_algorithm() -> None:
    simulation = small(volume=30.0, prevalence=0.2, sensitivity=0.8, specificity=0.85)
    config = simulation.clinic(3.0, 9)
    assert (config.seed, config.sites, config.studies_per_day, config.days) == (9, 1, 30.0, 37)
    [algorithm] = config.algorithms
    assert algorithm.name == DEFAULT_ALGORITHM.name == "pe-detect"
    assert (algorithm.prevalence, algorithm.sensitivity, algorithm.specificity) == (0.2, 0.8, 0.85)
    assert [exam.name for exam in config.exams] == ["CTA_CHEST"]
    [drift] = config.drifts
    assert (drift.site_id, drift.start_day, drift.kind) == (
        "site-01",
        12,
        DriftKind.SPECIFICITY_DROP,
    )
    assert drift.magnitude == pytest.approx(0.03)
    assert simulation.clinic(None, 9).drifts == ()
    assert simulation.clinic(None, 9).days == 20


def test_settings_declare_the_algorithm_and_ask_for_final_values_only() -> None:
    settings = simulator_settings()
    assert settings.kpi.emit_interval_ms is None
    [eligibility] = settings.eligibility
    assert (eligibility.algorithm_name, eligibility.modality, eligibility.body_parts) == (
        "pe-detect",
        "CT",
        ("CHEST",),
    )
    assert policy_kpi_windows(BreachPolicy.from_toml(POLICY)) == {
        ("discordance_rate", "1d"),
        ("alert_ppv", "30d"),
        ("score_psi", "7d"),
        ("time_to_result", "1d"),
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"volume": 0.0}, "volume 0 is not in"),
        ({"specificity": 1.5}, "specificity 1.5 is not in"),
        ({"shifts": (0.0,)}, "shift 0 points"),
        ({"shifts": (3.0, 3.0)}, "repeat one"),
        ({"specificity": 0.1, "shifts": (15.0,)}, "shift 15 points is not in"),
        ({"seeds": 0}, "at least one seed"),
        ({"horizon_days": 0}, "horizon must be positive"),
    ],
)
def test_parameters_out_of_range_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicySimulationError, match=message):
        small(**changes)


def test_a_broken_policy_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = 1\n[[rules]]\nid = "x"\nkpi = "nope"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="cannot load the breach policy"):
        load_breach_policy(path)
    with pytest.raises(ConfigurationError, match="cannot load"):
        load_breach_policy(tmp_path / "missing.toml")
