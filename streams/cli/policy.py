"""``imgov policy simulate``: what a breach policy costs in false alarms and buys in detection.

A governance committee runs it before adopting a policy file. The engine is
``streams.replay.policy_sim`` (the runs) and ``streams.replay.policy_tally`` (the
numbers, with their definitions); this module parses the options and prints one table
per volume, or JSON with ``--json``.

Examples::

    imgov policy simulate
    imgov policy simulate --seeds 8 --shift 3 --shift 5 --volume 30 --volume 60
    imgov policy simulate --policy candidate.toml --json > candidate.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.errors import ImgovError
from streams.governance import DEFAULT_POLICY, load_breach_policy
from streams.replay.policy_sim import (
    DAYS_PER_YEAR,
    DEFAULT_ALGORITHM,
    PolicyReport,
    PolicySimulation,
    RunResult,
    simulate_policies,
    simulator_settings,
)
from streams.replay.policy_tally import ALL_RULES, DelaySummary

__all__ = ["policy_app", "print_report", "report_json", "report_table"]

policy_app = typer.Typer(
    help="Breach policies: their false alarms and detection delays, simulated.",
    no_args_is_help=True,
)

_out = Console(highlight=False)
_err = Console(stderr=True)

_SERVICE = "Service"
_RUNS = "Runs"
_OUTPUT = "Output"


def _days(value: float | None, horizon: float) -> str:
    if value is None:
        return f">{horizon:g}"
    return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"


def _shift_label(points: float) -> str:
    return f"-{points:g} pts"


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def report_table(report: PolicyReport) -> Table:
    """The table of one volume: false alarms and delays per rule, then all rules."""
    sim = report.simulation
    table = Table(
        title=(
            f"Policy v{sim.policy.version} on {sim.algorithm_name} at "
            f"{sim.volume:g} studies/day: prevalence {sim.prevalence:g}, sensitivity "
            f"{sim.sensitivity:g}, specificity {sim.specificity:g}; {sim.seeds} seeds"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    # Nothing wraps or is cut: ``print_report`` gives the table its natural width.
    for name in ("rule", "severity"):
        table.add_column(name, no_wrap=True)
    table.add_column("false\nalarms\nper year", justify="right", no_wrap=True)
    for points in sim.shifts:
        table.add_column(f"{_shift_label(points)}\nmedian\ndays", justify="right", no_wrap=True)
        table.add_column("\np90\ndays", justify="right", no_wrap=True)
        table.add_column("\n\ndetected", justify="right", no_wrap=True)
    severity = {rule.id: rule.severity.value for rule in sim.policy.rules}
    for row, alarms in enumerate(report.false_alarms):
        total = alarms.rule_id == ALL_RULES
        level = severity.get(alarms.rule_id, "")
        colour = "red" if level == "CRITICAL" else "yellow"
        cells = [
            f"[bold]{alarms.rule_id}[/]" if total else alarms.rule_id,
            f"[{colour}]{level}[/]" if level else "",
            f"{alarms.per_series_year:.2f}",
        ]
        for per_rule in report.delays:
            delay = per_rule[row]
            cells += [
                _days(delay.median, delay.horizon_days),
                _days(delay.p90, delay.horizon_days),
                f"{delay.detected}/{len(delay.delays)}",
            ]
        table.add_row(*cells, end_section=row == len(report.false_alarms) - 2)
    return table


def _legend(report: PolicyReport, policy_path: Path) -> str:
    sim = report.simulation
    return (
        f"Policy: {_shown(policy_path)}. False alarms per model-site-year: breaches opened "
        f"on {sim.seeds} stable runs of {sim.stable_days} days ({report.series_years:.3g} "
        "model-site-years; the target is at most 1 per model-site-year over all rules). "
        f"Delay: days from the shift (day {sim.shift_start_day}) to the end of the window "
        "that opened the rule's first breach on the shifted series, median and p90 by "
        f"nearest rank over the seeds; >{sim.horizon_days}: not detected within the "
        f"{sim.horizon_days}-day horizon by that many seeds. All rules: every rule's false "
        "alarms, and the delay to the first breach of any rule."
    )


def print_report(report: PolicyReport, policy_path: Path) -> None:
    """Prints the table of one volume and its legend to stdout.

    The table keeps its natural width (no number is ever cut), wider than a narrow
    terminal or than the 80 columns rich assumes when stdout is not a terminal.
    """
    table = report_table(report)
    natural = _out.measure(table, options=_out.options.update_width(1_000)).maximum
    console = _out if natural <= _out.width else Console(highlight=False, width=natural)
    console.print(table)
    console.print(_legend(report, policy_path), style="dim")
    console.print()


def _delay_json(delay: DelaySummary) -> dict[str, Any]:
    return {
        "shift_points": delay.shift_points,
        "runs": len(delay.delays),
        "detected": delay.detected,
        "median_days": delay.median,
        "p90_days": delay.p90,
        "delays_days": list(delay.delays),
    }


def report_json(report: PolicyReport) -> dict[str, Any]:
    """One volume's numbers as JSON: per rule, false alarms and per-shift delays.

    A delay of null is a run that did not detect the shift within the horizon; a median
    or p90 of null falls on such a run (it exceeds ``horizon_days``).
    """
    sim = report.simulation
    rows = []
    for index, alarms in enumerate(report.false_alarms):
        rows.append(
            {
                "rule_id": alarms.rule_id,
                "false_alarms": alarms.opened,
                "false_alarms_per_model_site_year": alarms.per_series_year,
                "shifts": [_delay_json(per_rule[index]) for per_rule in report.delays],
            }
        )
    return {
        "volume": sim.volume,
        "prevalence": sim.prevalence,
        "sensitivity": sim.sensitivity,
        "specificity": sim.specificity,
        "model_site_years": report.series_years,
        "dead_letters": sum(run.dead_letters for run in report.runs),
        "rules": rows,
    }


def simulate_command(
    policy: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help=(
                "Breach policy file. [default: the one --config names, else "
                "infra/policy/breach_policy.toml]"
            ),
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Governance settings (TOML) instead of the built-in ones of the service.",
        ),
    ] = None,
    volume: Annotated[
        list[float] | None,
        typer.Option(
            min=0.1,
            help="Studies the model reads per day; repeatable, one table each. [default: 60]",
            show_default=False,
            rich_help_panel=_SERVICE,
        ),
    ] = None,
    prevalence: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Prevalence.", rich_help_panel=_SERVICE)
    ] = DEFAULT_ALGORITHM.prevalence,
    sensitivity: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Baseline sensitivity.", rich_help_panel=_SERVICE),
    ] = DEFAULT_ALGORITHM.sensitivity,
    specificity: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Baseline specificity.", rich_help_panel=_SERVICE),
    ] = DEFAULT_ALGORITHM.specificity,
    shift: Annotated[
        list[float] | None,
        typer.Option(
            min=0.01,
            help="Specificity drop in points; repeatable. [default: 3, 5]",
            show_default=False,
            rich_help_panel=_RUNS,
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Runs per scenario.", rich_help_panel=_RUNS)
    ] = 20,
    seed: Annotated[
        int, typer.Option(min=0, help="First seed of the runs.", rich_help_panel=_RUNS)
    ] = 0,
    days: Annotated[
        int, typer.Option(min=1, help="Days of each stable run.", rich_help_panel=_RUNS)
    ] = DAYS_PER_YEAR,
    shift_start: Annotated[
        int,
        typer.Option(min=0, help="First shifted day (0-based).", rich_help_panel=_RUNS),
    ] = 90,
    horizon: Annotated[
        int,
        typer.Option(min=1, help="Days simulated after the shift starts.", rich_help_panel=_RUNS),
    ] = 180,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Runs in parallel processes. [default: the number of CPUs]",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of tables.", rich_help_panel=_OUTPUT)
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show progress on stderr.", rich_help_panel=_OUTPUT)
    ] = True,
) -> None:
    """Simulate a breach policy on one AI service: false alarms and detection delays.

    For each volume, the clinic simulator runs one site and one algorithm (the PE
    detector on CT pulmonary angiography) for every seed: a stable run (a year by
    default), whose breaches are false alarms, and per shift a run whose specificity
    drops by that many points from the shift start on. Every run goes through the real
    governance core (lineage, KPI windows, the breach policy).

    The table gives per rule the false alarms per model-site-year and, per shift, the
    median and 90th percentile of the detection delay in days over the seeds, with how
    many seeds detected the shift within the horizon.
    """
    try:
        settings = simulator_settings(config)
        policy_path = policy or (settings.breach_policy if config is not None else DEFAULT_POLICY)
        breach_policy = load_breach_policy(policy_path)
        simulations = [
            PolicySimulation(
                policy=breach_policy,
                settings=settings,
                volume=studies,
                prevalence=prevalence,
                sensitivity=sensitivity,
                specificity=specificity,
                shifts=tuple(dict.fromkeys(shift or (3.0, 5.0))),
                seeds=seeds,
                base_seed=seed,
                stable_days=days,
                shift_start_day=shift_start,
                horizon_days=horizon,
            )
            for studies in (volume or [60.0])
        ]
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    runs = sum(len(sim.runs()) for sim in simulations)
    workers = min(jobs or os.cpu_count() or 1, runs)
    started = time.perf_counter()
    try:
        reports = _simulate(simulations, workers, runs, progress)
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    wall_s = time.perf_counter() - started
    timing = _timing(reports, wall_s, workers)

    if json_output:
        document = {
            "policy": {"path": str(policy_path), "version": breach_policy.version},
            "algorithm": simulations[0].algorithm_name,
            "seeds": seeds,
            "base_seed": seed,
            "stable_days": days,
            "shift_start_day": shift_start,
            "horizon_days": horizon,
            "volumes": [report_json(report) for report in reports],
            "timing": timing,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        for report in reports:
            print_report(report, policy_path)
    _err.print(
        f"{timing['runs']} runs, {timing['seed_years']:.1f} seed-years in "
        f"{timing['wall_s']:.1f} s with {workers} process(es); one seed-year takes "
        f"{timing['simulate_s_per_seed_year']:.1f} s to simulate and "
        f"{timing['replay_s_per_seed_year']:.1f} s to replay",
        soft_wrap=True,
    )


def _simulate(
    simulations: list[PolicySimulation], workers: int, runs: int, progress: bool
) -> list[PolicyReport]:
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not progress,
    ) as bar:
        task = bar.add_task("runs", total=runs)

        def on_run(_: RunResult) -> None:
            bar.advance(task)

        return simulate_policies(simulations, jobs=workers, on_run=on_run)


def _timing(reports: list[PolicyReport], wall_s: float, workers: int) -> dict[str, Any]:
    runs = [run for report in reports for run in report.runs]
    # At least one run of at least one day: never zero.
    seed_years = sum(run.days for run in runs) / DAYS_PER_YEAR
    return {
        "runs": len(runs),
        "jobs": workers,
        "seed_years": seed_years,
        "wall_s": wall_s,
        "simulate_s_per_seed_year": sum(run.simulate_s for run in runs) / seed_years,
        "replay_s_per_seed_year": sum(run.replay_s for run in runs) / seed_years,
    }


policy_app.command("simulate")(simulate_command)
