"""The breach policy simulator: how often a policy cries wolf, how soon it sees a shift.

``simulate_policies`` is what ``imgov policy simulate`` calls before a governance
committee adopts a breach policy. For one service (one site, one algorithm: by default
the simulator's CT pulmonary-angiography PE detector) at a given volume, it runs the
clinic simulator (``streams.simulate``) for many seeds, feeds each run through the real
governance core (``GovernanceProcessor``: lineage join, KPI windows, the breach policy)
and keeps only the breaches; ``streams.replay.policy_tally`` turns them into false
alarms per model-site-year and detection delays.

The runs of each seed:

- one *stable* run of ``stable_days`` (365): its breaches are false alarms;
- per shift, one run of ``shift_start_day + horizon_days`` days (90 + 180) in which the
  algorithm's specificity drops by the shift, in points, from ``shift_start_day`` on
  (``DriftKind.SPECIFICITY_DROP``), after the baselines of the policy were collected
  (60 days for the sustained-discordance rule, 14 for the PSI reference).

The runs of a seed share the seed, so the days before the shift are those of the stable
run (common random numbers: the runs differ only by what the shift changes).

The simulated service does only the exams its algorithm reads (CT angiography of the
chest for the PE detector): ``volume`` is the studies the model reads per day. The
governance settings are the environment's (``IMGOV_*``) or a file's, with the demo key
(nothing leaves the process) and final KPI values only; without a file, the algorithm is
declared eligible for those exams, so the coverage rule has something to judge.

How a run is fed to the core, and why:

1. Events go in delivery order (late and duplicate deliveries included), in batches of
   about half an hour of event time (``replay_chunk_size``, as ``imgov demo``).
2. Only the KPI windows the policy's rules read are computed (``kpi_windows``): the
   other KPI values change no breach and were about 60 % of the replay time.
3. Every output but the breaches is dropped after each batch: memory holds the run's
   events and the core's state, never KPI values or lineage records.
4. The cyclic garbage collector is frozen over the simulated events while they are
   replayed (they live until the run ends; traversing them again and again cost 10 %).
5. Runs go to ``jobs`` worker processes, longest first.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ImgovError
from schemas.events import Event
from schemas.records import Breach
from schemas.units import DAY_MS
from streams.core.kpi.breach import BreachEvaluator, BreachPolicy
from streams.core.lineage.config import AlgorithmEligibility
from streams.core.pipeline import GovernanceProcessor
from streams.governance import (
    GovernanceSettings,
    lineage_config,
    load_settings,
)
from streams.replay.demo import replay_chunk_size
from streams.replay.policy_tally import (
    ALL_RULES,
    DelaySummary,
    FalseAlarms,
    detection_delay_days,
    tally_false_alarms,
)
from streams.simulate.config import (
    DEFAULT_START_MS,
    AlgorithmConfig,
    DriftKind,
    DriftScenario,
    LogNormal,
    SimulationConfig,
    site_id_for,
)
from streams.simulate.run import run_simulation

__all__ = [
    "DAYS_PER_YEAR",
    "DEFAULT_ALGORITHM",
    "SITE_ID",
    "PolicyReport",
    "PolicySimulation",
    "PolicySimulationError",
    "RunResult",
    "build_policy_processor",
    "policy_kpi_windows",
    "replay_breaches",
    "run_one",
    "simulate_policies",
    "simulator_settings",
    "summarise",
]


def _in_control_pe_detector() -> AlgorithmConfig:
    pe = SimulationConfig().algorithm("PE")
    # Every alert channel answered within the 15-minute SLA about 94 % of the time
    # (median 4 minutes, 3 % never): the demo's clinic answers PE alerts late, which the
    # alert-response rule rightly reports, and a rightful breach is no false alarm.
    answered = tuple(
        channel.model_copy(
            update={
                "response_minutes": LogNormal(median=4.0, sigma=0.7, maximum=240.0),
                "no_response_rate": 0.03,
            }
        )
        for channel in pe.channels
    )
    return pe.model_copy(update={"sensitivity": 0.92, "specificity": 0.98, "channels": answered})


DEFAULT_ALGORITHM: AlgorithmConfig = _in_control_pe_detector()
"""The simulator's PE detector on CT pulmonary angiography (``pe-detect``), in control.

Prevalence 0.12, sensitivity 0.92 and specificity 0.98: a baseline discordance of
about 3 % (0.12 x 0.08 + 0.88 x 0.02), the order of a deployed PE detector's, where a
3-point specificity drop (2.6 points more discordance) is the shift that matters. Alerts
are answered within the SLA, so that every rule of the policy judges a healthy service
in the stable runs and each breach it opens there is a false alarm.
"""

SITE_ID = site_id_for(1)
"""The one simulated site."""

DAYS_PER_YEAR = 365


class PolicySimulationError(ImgovError):
    """The simulation's parameters are invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PolicySimulation:
    """What to simulate for one volume (see the module docstring).

    Attributes:
        policy: the breach policy under test.
        settings: governance settings (``simulator_settings``).
        volume: studies the algorithm reads per day (mean).
        prevalence, sensitivity, specificity: of the algorithm before any shift.
        shifts: specificity lost, in percentage points (3.0: 0.90 becomes 0.87).
        seeds: runs per scenario; seeds ``base_seed`` to ``base_seed + seeds - 1``.
        stable_days: length of the stable runs.
        shift_start_day: first shifted day (0-based) of the shift runs.
        horizon_days: how long the shift runs go on after the shift starts.
        algorithm: the simulated algorithm; its rates are replaced by the above.

    Raises:
        PolicySimulationError: a value is out of range (on construction).
    """

    policy: BreachPolicy
    settings: GovernanceSettings
    volume: float = 60.0
    prevalence: float = DEFAULT_ALGORITHM.prevalence
    sensitivity: float = DEFAULT_ALGORITHM.sensitivity
    specificity: float = DEFAULT_ALGORITHM.specificity
    shifts: tuple[float, ...] = (3.0, 5.0)
    seeds: int = 20
    base_seed: int = 0
    stable_days: int = DAYS_PER_YEAR
    shift_start_day: int = 90
    horizon_days: int = 180
    algorithm: AlgorithmConfig = field(default=DEFAULT_ALGORITHM)

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.volume <= 10_000:
            problems.append(f"volume {self.volume:g} is not in (0, 10000] studies/day")
        for name in ("prevalence", "sensitivity", "specificity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} {getattr(self, name):g} is not in [0, 1]")
        if len(set(self.shifts)) != len(self.shifts):
            problems.append(f"the shifts {list(self.shifts)} repeat one")
        for shift in self.shifts:
            if not 0 < shift <= self.specificity * 100:
                problems.append(
                    f"shift {shift:g} points is not in (0, {self.specificity * 100:g}] "
                    "(the specificity it drops)"
                )
        if self.seeds < 1 or self.base_seed < 0:
            problems.append("at least one seed is needed, and seeds are not negative")
        if min(self.stable_days, self.horizon_days) < 1 or self.shift_start_day < 0:
            problems.append("days and horizon must be positive, the shift start not negative")
        if problems:
            raise PolicySimulationError("; ".join(problems))

    @property
    def site_id(self) -> str:
        return SITE_ID

    @property
    def algorithm_name(self) -> str:
        return self.algorithm.name

    def days(self, shift: float | None) -> int:
        """Days simulated by a run of ``shift`` (None: a stable run)."""
        return self.stable_days if shift is None else self.shift_start_day + self.horizon_days

    def runs(self) -> list[tuple[float | None, int]]:
        """(shift or None, seed) of every run: stable ones first, then each shift."""
        seeds = range(self.base_seed, self.base_seed + self.seeds)
        return [(shift, seed) for shift in (None, *self.shifts) for seed in seeds]

    def clinic(self, shift: float | None, seed: int) -> SimulationConfig:
        """The simulated clinic of one run: one site, the algorithm and its exams only."""
        algorithm = self.algorithm.model_copy(
            update={
                "prevalence": self.prevalence,
                "sensitivity": self.sensitivity,
                "specificity": self.specificity,
            }
        )
        base = SimulationConfig()
        exams = tuple(
            exam.model_copy(update={"weight": 1.0})
            for exam in base.exams
            if algorithm.eligible(exam)
        )
        drifts: tuple[DriftScenario, ...] = ()
        if shift is not None:
            drifts = (
                DriftScenario(
                    site_id=SITE_ID,
                    start_day=self.shift_start_day,
                    kind=DriftKind.SPECIFICITY_DROP,
                    magnitude=shift / 100,
                    finding_code=algorithm.finding_code,
                ),
            )
        return SimulationConfig(
            seed=seed,
            start_ms=DEFAULT_START_MS,
            days=self.days(shift),
            sites=1,
            studies_per_day=self.volume,
            exams=exams,
            algorithms=(algorithm,),
            drifts=drifts,
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run kept: its breaches, its size and its wall time in seconds."""

    shift: float | None
    seed: int
    days: int
    studies: int
    events: int
    breaches: tuple[Breach, ...]
    dead_letters: int
    simulate_s: float
    replay_s: float


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """The tally of one simulation (one volume).

    Attributes:
        simulation: what was simulated.
        runs: every run, stable ones first, each scenario in seed order.
        false_alarms: per rule in policy order, then ``ALL_RULES``.
        delays: per shift (in ``simulation.shifts`` order), per rule in policy order,
            then ``ALL_RULES`` (the first breach of any rule).
    """

    simulation: PolicySimulation
    runs: tuple[RunResult, ...]
    false_alarms: tuple[FalseAlarms, ...]
    delays: tuple[tuple[DelaySummary, ...], ...]

    @property
    def series_years(self) -> float:
        """Exposure of the stable runs: one (site, algorithm) series per run."""
        return self.simulation.seeds * self.simulation.stable_days / DAYS_PER_YEAR


def simulator_settings(
    config: Path | None = None, algorithm: AlgorithmConfig = DEFAULT_ALGORITHM
) -> GovernanceSettings:
    """Governance settings of the simulated service: demo key, final KPI values only.

    Args:
        config: a governance settings file (as ``imgov replay --config``); None: the
            environment's settings, with ``algorithm`` declared eligible for its
            modality and body part (coverage).
        algorithm: the simulated algorithm.

    Raises:
        ConfigurationError: the file is unreadable or invalid.
    """
    settings = load_settings(config, demo=True)
    update: dict[str, object] = {
        "kpi": settings.kpi.model_copy(update={"emit_interval_ms": None}),
    }
    if config is None:
        update["eligibility"] = (
            AlgorithmEligibility(
                algorithm_name=algorithm.name,
                finding_code=algorithm.finding_code,
                modality=algorithm.modality,
                body_parts=(algorithm.body_part,),
            ),
        )
    return settings.model_copy(update=update)


def policy_kpi_windows(policy: BreachPolicy) -> frozenset[tuple[str, str]]:
    """The (KPI, window size) pairs the rules of ``policy`` read."""
    return frozenset((rule.kpi, rule.window) for rule in policy.rules)


def build_policy_processor(
    simulation: PolicySimulation, *, every_kpi: bool = False
) -> GovernanceProcessor:
    """A fresh core for one run: the policy's KPI windows only, unless ``every_kpi``.

    Raises:
        ConfigurationError: the settings cannot build a core (e.g. a malformed key).
    """
    return GovernanceProcessor(
        lineage_config(simulation.settings),
        simulation.settings.kpi,
        BreachEvaluator(simulation.policy),
        kpi_windows=None if every_kpi else policy_kpi_windows(simulation.policy),
    )


def run_one(simulation: PolicySimulation, shift: float | None, seed: int) -> RunResult:
    """Simulates one run and feeds it through the core; returns its breaches.

    Raises:
        ConfigurationError: the settings cannot build a core (e.g. a malformed key).
    """
    processor = build_policy_processor(simulation)
    clock = time.perf_counter()
    config = simulation.clinic(shift, seed)
    run = run_simulation(config)
    events = [delivery.event for delivery in run.deliveries]
    studies = len(run.truths)
    del run  # the ground truth is not needed: the breaches are the result
    simulate_s = time.perf_counter() - clock

    clock = time.perf_counter()
    gc.freeze()
    try:
        breaches, dead_letters = replay_breaches(processor, events, config.days)
    finally:
        gc.unfreeze()
    return RunResult(
        shift=shift,
        seed=seed,
        days=config.days,
        studies=studies,
        events=len(events),
        breaches=tuple(breaches),
        dead_letters=dead_letters,
        simulate_s=simulate_s,
        replay_s=time.perf_counter() - clock,
    )


def replay_breaches(
    processor: GovernanceProcessor, events: Sequence[Event], days: int
) -> tuple[list[Breach], int]:
    """Feeds a run's events through a fresh core; returns its breaches and dead letters.

    Args:
        processor: a fresh core.
        events: the run's events in delivery order.
        days: the days they span (the batch size is about half an hour of them).

    Returns:
        Every breach, in emission order, and how many dead letters the core returned
        (e.g. an addendum that came after its KPI windows closed).
    """
    breaches: list[Breach] = []
    dead_letters = 0
    size = replay_chunk_size(len(events), days)
    for start in range(0, len(events), size):
        out = processor.process(events[start : start + size])
        # Only the breaches are kept: lineage, KPI values and reviews go now.
        breaches.extend(out.breaches)
        dead_letters += len(out.dead_letters)
    out = processor.close()
    breaches.extend(out.breaches)
    dead_letters += len(out.dead_letters)
    return breaches, dead_letters


def summarise(simulation: PolicySimulation, runs: Sequence[RunResult]) -> PolicyReport:
    """Tallies the runs of one simulation: false alarms and detection delays."""
    rule_ids = [rule.id for rule in simulation.policy.rules]
    start_ms = DEFAULT_START_MS
    stable = [run for run in runs if run.shift is None]
    series_years = len(stable) * simulation.stable_days / DAYS_PER_YEAR
    false_alarms = tally_false_alarms(
        rule_ids,
        (breach for run in stable for breach in run.breaches),
        series_years=series_years,
        period_end_ms=start_ms + simulation.stable_days * DAY_MS,
    )
    shift_start_ms = start_ms + simulation.shift_start_day * DAY_MS
    horizon_end_ms = shift_start_ms + simulation.horizon_days * DAY_MS
    delays: list[tuple[DelaySummary, ...]] = []
    for shift in simulation.shifts:
        shifted = [run for run in runs if run.shift == shift]
        rows = []
        for rule_id in [*rule_ids, None]:
            per_seed = tuple(
                detection_delay_days(
                    run.breaches,
                    rule_id,
                    site_id=simulation.site_id,
                    algorithm_name=simulation.algorithm_name,
                    shift_start_ms=shift_start_ms,
                    horizon_end_ms=horizon_end_ms,
                )
                for run in shifted
            )
            name = ALL_RULES if rule_id is None else rule_id
            rows.append(DelaySummary(name, shift, per_seed, simulation.horizon_days))
        delays.append(tuple(rows))
    return PolicyReport(simulation, tuple(runs), tuple(false_alarms), tuple(delays))


def simulate_policies(
    simulations: Sequence[PolicySimulation],
    *,
    jobs: int = 1,
    on_run: Callable[[RunResult], None] | None = None,
) -> list[PolicyReport]:
    """Runs every simulation's runs, ``jobs`` at a time, and tallies each simulation.

    Args:
        simulations: e.g. one per volume.
        jobs: worker processes; 1 runs everything in this process.
        on_run: called in this process with each run as it completes.

    Returns:
        One report per simulation, in order.

    Raises:
        ConfigurationError: the settings cannot build a core.
    """
    tasks = [(i, shift, seed) for i, sim in enumerate(simulations) for shift, seed in sim.runs()]
    # Longest runs first, so that no long run starts last while the other workers idle.
    tasks.sort(key=lambda t: -simulations[t[0]].days(t[1]) * simulations[t[0]].volume)
    results: dict[tuple[int, float | None, int], RunResult] = {}

    def done(index: int, result: RunResult) -> None:
        results[(index, result.shift, result.seed)] = result
        if on_run is not None:
            on_run(result)

    if jobs <= 1:
        for index, shift, seed in tasks:
            done(index, run_one(simulations[index], shift, seed))
    else:
        # Fresh interpreters, not forks: the parent may run threads (a progress bar).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures: dict[Future[RunResult], int] = {
                pool.submit(run_one, simulations[index], shift, seed): index
                for index, shift, seed in tasks
            }
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return [
        summarise(sim, [results[(i, shift, seed)] for shift, seed in sim.runs()])
        for i, sim in enumerate(simulations)
    ]
