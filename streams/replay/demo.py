"""The embedded demo: a simulated clinic replayed into chDB, end to end, no servers.

``run_demo`` is what ``imgov demo`` (and ``make demo``) calls. The steps, in order:

1. The demo directory is emptied (it must be a demo directory, see ``reset_workdir``),
   so that running the demo twice gives the same tables, not twice the rows.
2. ``imgov simulate`` in-process: ``days`` x ``sites`` with both algorithms (ICH, PE)
   and one drift scenario; the events (delivery order) and the ground truth are written
   to ``events.jsonl`` and ``truth.jsonl`` in the demo directory.
3. The events are replayed through the governance core (lineage, KPI windows, the
   breach policy of ``infra/policy``) into the audit tables of a chDB data directory
   (``chdb/``), every accepted event included (``event_log``); the KPI windows run in a
   second process (``streams.replay.parallel``).

The report and the terminal summary read the tables afterwards (``streams.report.data``), the
same way a compliance user would.

The default scenario: three sites, 90 days, 60 studies per site and day. From day 60 on
(the end of the 60-day baseline of the sustained-discordance rule) the ICH detector at
site-02 loses 15 points of specificity, as after an unannounced protocol change: its
false positives triple, its daily discordance leaves the baseline's 95 % bound (the
Mayo rule, CRITICAL), its 30-day alert PPV falls below 0.30 (WARNING) and its score
distribution moves (PSI). PE at site-02 and both models elsewhere stay healthy, which
is what makes the drifted series stand out.

Volume: KPI emission dominates the replay (every 1 d, 7 d and 30 d window of 19 KPIs
per site, model and version, and 1 h windows of the 4 operational ones), so the demo
asks for final values only (``emit_interval_ms=None``) and keeps about 60 studies per
site and day.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import ImgovError
from sinks.base import Sink
from sinks.jsonl import JsonLinesSink
from sinks.tee import TeeSink
from streams.governance import (
    DEMO_SETTINGS,
    GovernanceSettings,
    build_pseudonymiser,
    build_validator,
    checkpoint_keyring,
    load_settings,
    wall_clock_ms,
)
from streams.paths import STATE_DIR
from streams.replay.anchor import write_replay_checkpoint
from streams.replay.driver import ReplayStats
from streams.replay.parallel import replay_parallel
from streams.simulate.config import DriftKind, DriftScenario, SimulationConfig
from streams.simulate.output import write_events, write_truth
from streams.simulate.run import run_simulation

__all__ = [
    "DEFAULT_DEMO_DIR",
    "DEFAULT_REPORT",
    "DemoError",
    "DemoOptions",
    "DemoRun",
    "demo_settings",
    "demo_simulation_config",
    "replay_chunk_size",
    "reset_workdir",
    "run_demo",
]

DEFAULT_DEMO_DIR = STATE_DIR / "demo"
DEFAULT_REPORT = STATE_DIR / "report.html"

MARKER = ".imgov-demo"
"""File that marks a directory as made by the demo, hence safe to delete."""

EVENTS_FILE = "events.jsonl"
TRUTH_FILE = "truth.jsonl"
CHDB_DIR = "chdb"
OUTPUTS_DIR = "outputs"


class DemoError(ImgovError):
    """The demo cannot run: its directory is unsafe to reset, or a step failed."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo simulates and where it writes.

    Attributes:
        workdir: the demo directory (emptied first).
        days, sites, studies_per_day, seed: the simulated clinic.
        drift_site, drift_day, drift_kind, drift_magnitude, drift_finding: the one
            drift scenario (``drift_site`` None: no drift).
        chunk_size: events joined as one batch by the replay; None: about half an
            hour of event time (``replay_chunk_size``).
        jsonl_outputs: also write every output as JSON Lines under ``outputs/``
            (lineage, KPI values, breaches, ...), e.g. to check the tables against.
        config: governance settings (TOML), as ``imgov replay --config``.
    """

    workdir: Path = DEFAULT_DEMO_DIR
    days: int = 90
    sites: int = 3
    studies_per_day: float = 60.0
    seed: int = 7
    drift_site: str | None = "site-02"
    drift_day: int = 60
    drift_kind: DriftKind = DriftKind.SPECIFICITY_DROP
    drift_magnitude: float = 0.15
    drift_finding: str | None = "ICH"
    chunk_size: int | None = None
    jsonl_outputs: bool = False
    config: Path | None = None

    @property
    def events_path(self) -> Path:
        return self.workdir / EVENTS_FILE

    @property
    def truth_path(self) -> Path:
        return self.workdir / TRUTH_FILE

    @property
    def chdb_path(self) -> Path:
        return self.workdir / CHDB_DIR

    @property
    def outputs_path(self) -> Path:
        return self.workdir / OUTPUTS_DIR


@dataclass(slots=True)
class DemoRun:
    """What a demo run did, with the wall time of each step in seconds."""

    options: DemoOptions
    simulation: SimulationConfig
    studies: int
    replay: ReplayStats
    timings: dict[str, float] = field(default_factory=dict)


def demo_simulation_config(options: DemoOptions) -> SimulationConfig:
    """Returns the simulated clinic of ``options`` (start: the default 2026-01-01)."""
    drifts: tuple[DriftScenario, ...] = ()
    if options.drift_site is not None:
        drifts = (
            DriftScenario(
                site_id=options.drift_site,
                start_day=options.drift_day,
                kind=options.drift_kind,
                magnitude=options.drift_magnitude,
                finding_code=options.drift_finding,
            ),
        )
    return SimulationConfig(
        seed=options.seed,
        days=options.days,
        sites=options.sites,
        studies_per_day=options.studies_per_day,
        drifts=drifts,
    )


def replay_chunk_size(events: int, days: int) -> int:
    """Returns a replay batch of about half an hour of event time (at least 8 events).

    Why so small: the core feeds a batch's lineage revisions to the KPI windows in
    study order, so a batch spanning more than the allowed lateness (2 h) finalises
    day windows before the rest of the batch has reached them. Those windows are then
    re-emitted with ``revision + 1``, and the breach policy judges only the first
    final value of a window: with batches of days, the daily sustained-discordance
    rule would judge days from a handful of reports and miss the drift. Small batches
    cost no throughput here (the KPI windows dominate, not the join).
    """
    per_half_hour = events / max(days * 48, 1)
    return max(8, round(per_half_hour))


def demo_settings(config: Path | None = None) -> GovernanceSettings:
    """Returns the governance settings of the demo: demo key, final KPI values only.

    Without ``config``, those of the synthetic clinic (``infra/demo/governance.toml``:
    which studies its two algorithms are configured to read).

    Current (provisional) KPI values would only add volume to an offline replay whose
    event time runs at thousands of days per hour.
    """
    settings = load_settings(config or DEMO_SETTINGS, demo=True)
    kpi = settings.kpi.model_copy(update={"emit_interval_ms": None})
    return settings.model_copy(update={"kpi": kpi})


def reset_workdir(path: Path) -> None:
    """Empties the demo directory, creating it when missing, and marks it as the demo's.

    Raises:
        DemoError: ``path`` exists, is not empty and was not made by the demo (it holds
            no ``.imgov-demo`` marker): the demo never deletes someone else's files.
    """
    if path.exists():
        if not path.is_dir():
            raise DemoError(f"{path} exists and is not a directory")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise DemoError(
                f"{path} is not empty and was not created by `imgov demo` (no {MARKER} "
                "file): choose another --dir or empty it yourself"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `imgov demo`; deleted and rebuilt on every run\n")


def run_demo(
    options: DemoOptions,
    *,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DemoRun:
    """Simulates the demo clinic and replays it into a fresh chDB directory.

    Args:
        options: what to simulate and where.
        on_step: called with the name of each step as it starts.
        on_progress: called with the number of events replayed since the last call.

    Returns:
        The run's counts and timings; the chDB directory is closed again.

    Raises:
        DemoError: the demo directory is unsafe to reset.
        ImgovError: the settings are invalid or the chDB directory is in use.
        OSError: a file cannot be written.
    """
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)

    started = time.perf_counter()
    reset_workdir(options.workdir)
    settings = demo_settings(options.config)
    validator = build_validator(settings)

    step("simulate")
    clock = time.perf_counter()
    simulation = demo_simulation_config(options)
    run = run_simulation(simulation)
    write_events(options.events_path, (d.event for d in run.deliveries))
    write_truth(options.truth_path, run.truths)
    studies = len(run.truths)
    events = len(run.deliveries)
    del run  # the replay reads the file; the in-memory run is only garbage now
    timings["simulate"] = time.perf_counter() - clock

    step("replay")
    clock = time.perf_counter()
    from sinks.chdb import ChdbSink  # chDB loads a large library: only when needed

    pseudonymiser = build_pseudonymiser(settings)
    keyring = checkpoint_keyring(settings)
    chdb_sink = ChdbSink(
        options.chdb_path, clean_event=pseudonymiser.pseudonymise_event, background=True
    )
    sinks: list[Sink] = [chdb_sink]
    if options.jsonl_outputs:
        sinks.append(JsonLinesSink(options.outputs_path))
    sink = TeeSink(sinks)
    try:
        stats = replay_parallel(
            [options.events_path],
            settings,
            sinks,
            validator,
            record_events=True,
            chunk_size=options.chunk_size or replay_chunk_size(events, options.days),
            on_progress=on_progress,
            collect_heads=True,
        )
        write_replay_checkpoint(stats, chdb_sink.backend, keyring, wall_clock_ms())
    finally:
        sink.close()
    timings["replay"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started
    return DemoRun(options, simulation, studies, stats, timings)
