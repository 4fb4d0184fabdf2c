"""``imgov demo``: the whole pipeline on one machine, no servers, in about a minute.

Simulates a three-site clinic with a drifting ICH detector, replays it through the
governance core into chDB (``.imgov/demo/chdb``), prints what a governance committee
would look at first (scorecard, breaches with their evidence, review candidates),
writes the self-contained HTML report (``.imgov/report.html``) and ends with compliance
queries to run with ``imgov query``.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.errors import ImgovError
from schemas.units import MISSING, format_day, format_percent
from sinks.query import ChdbBackend
from streams.core.kpi.breach import BreachRule
from streams.replay.demo import (
    DEFAULT_DEMO_DIR,
    DEFAULT_REPORT,
    DemoOptions,
    DemoRun,
    demo_settings,
    run_demo,
)
from streams.report.data import ReportData
from streams.report.format import format_breach_threshold, format_breach_value
from streams.report.page import COMPLIANCE_QUERIES, load_policy_rules, outlier_rates, write_report
from streams.simulate.config import DriftKind

__all__ = ["build_report_for", "demo_command", "print_summary"]

_out = Console(highlight=False)
_err = Console(stderr=True)

# Panels of `imgov demo --help`: each is laid out on its own, so a long option name in one
# does not squeeze the help column of the others at 80 columns.
_OUTPUT = "Output"
_CLINIC = "Clinic"
_DRIFT = "Drift"


def build_report_for(
    chdb: Path,
    report: Path,
    *,
    generated_at_ms: int,
    config: Path | None = None,
    query_hint: str | None = None,
) -> ReportData:
    """Writes the governance report of a chDB directory; returns the data it shows.

    Raises:
        ImgovError: the directory cannot be opened or its tables read.
        OSError: the report cannot be written.
    """
    rules, version = load_policy_rules(demo_settings(config).breach_policy)
    backend = ChdbBackend(chdb)
    try:
        return write_report(
            backend,
            report,
            source=f"chDB {chdb}",
            generated_at_ms=generated_at_ms,
            policy=rules,
            policy_version=version,
            query_hint=query_hint or f"imgov query --chdb {shlex.quote(str(chdb))}",
        )
    finally:
        backend.close()


def _scorecard_table(data: ReportData) -> Table:
    table = Table(title="Scorecard per model and site (view model_scorecard)", title_justify="left")
    columns: list[tuple[str, str]] = [
        ("studies", "studies"),
        ("ppv", "PPV"),
        ("sensitivity", "sens."),
        ("specificity", "spec."),
        ("discordance_rate", "discord."),
        ("alert_response_rate", "alerts ≤15 min"),
        ("review_candidates", "review"),
    ]
    table.add_column("model")
    table.add_column("site")
    for _, label in columns:
        table.add_column(label, justify="right")
    flagged = outlier_rates(data.scorecard)
    for row in data.scorecard:
        cells = []
        for name, _ in columns:
            value: Any = row.get(name)
            text = f"{value:,}" if isinstance(value, int) else format_percent(value)
            if (row["algorithm_name"], row["site_id"], name) in flagged:
                text = f"[bold red]{text}[/]"
            cells.append(text)
        table.add_row(f"{row['algorithm_name']} {row['algorithm_version']}", row["site_id"], *cells)
    return table


def _breach_tables(data: ReportData, policy: Sequence[BreachRule]) -> list[Any]:
    out: list[Any] = []
    counts = Table(title="Breaches opened (table kpi_breaches)", title_justify="left")
    for name in ("rule", "severity", "opened", "still open", "where"):
        counts.add_column(name, justify="right" if name in {"opened", "still open"} else "left")
    by_rule: dict[str, list[Any]] = {}
    for breach in data.breaches:
        by_rule.setdefault(breach["rule_id"], []).append(breach)
    order = {"CRITICAL": 0, "WARNING": 1}
    for rule, items in sorted(
        by_rule.items(), key=lambda kv: (order.get(kv[1][0]["severity"], 2), kv[0])
    ):
        severity = items[0]["severity"]
        colour = "red" if severity == "CRITICAL" else "yellow"
        where = sorted({f"{b['algorithm_name']}@{b['site_id']}" for b in items if b.is_open})
        counts.add_row(
            rule,
            f"[{colour}]{severity}[/]",
            str(len(items)),
            str(sum(1 for b in items if b.is_open)),
            ", ".join(where) or MISSING,
        )
    out.append(counts)
    critical = [b for b in data.open_breaches if b["severity"] == "CRITICAL"]
    if critical:
        out.append("[bold]Open CRITICAL breaches and the evidence behind them:[/]")
        for b in critical:
            out.append(
                f"  [red]●[/] [bold]{b['rule_id']}[/] {b['algorithm_name']} at {b['site_id']}: "
                f"{b['kpi']} {format_breach_value(b.opened, policy)} vs "
                f"{format_breach_threshold(b.opened, policy)} ({b['window_size']} window ending "
                f"{format_day(b['window_end_ms'] - 1)})\n    [dim]{b['evidence']}[/]"
            )
    return out


def _review_lines(data: ReportData) -> list[str]:
    total = data.totals.get("review_candidates", 0)
    per = ", ".join(
        f"{algorithm}@{site} {n}" for (site, algorithm), n in sorted(data.review_counts.items())
    )
    lines = [
        f"[bold]Review candidates[/] (AI positive, report absent, alert untouched): {total} ({per})"
    ]
    for r in data.review_examples[:3]:
        lines.append(
            f"  {r['site_id']} {r['algorithm_name']} study {r['study_uid']} score "
            f"{r['score']} report {r['report_label']}, alert {r['alert_channel']} "
            f"{r['alert_final_state']}"
        )
    return lines


def print_summary(
    data: ReportData, console: Console = _out, *, policy: Sequence[BreachRule] = ()
) -> None:
    """Prints the scorecard, breaches with evidence and review candidates of ``data``.

    Args:
        policy: the breach rules the values were judged by: a CUSUM breach is printed as
            its statistic against its limit, any other in its KPI's unit.
    """
    t = data.totals
    period = MISSING
    if data.period:
        period = f"{format_day(data.period[0])} to {format_day(data.period[1] - 1)}"
    console.print(
        f"[bold]{t.get('studies', 0):,} studies[/], {t.get('events', 0):,} events audited, "
        f"{t.get('lineage_revisions', 0):,} lineage revisions, {t.get('kpi_values', 0):,} "
        f"final KPI windows, {t.get('rejected', 0):,} rejected inputs; period {period}"
    )
    console.print(_scorecard_table(data))
    for item in _breach_tables(data, policy):
        console.print(item)
    console.print()
    for line in _review_lines(data):
        console.print(line)


def _queries(chdb: Path, data: ReportData) -> list[str]:
    study = data.review_examples[0]["study_uid"] if data.review_examples else "<study_uid>"
    prefix = f"imgov query --chdb {shlex.quote(str(chdb))}"
    return [
        f'# {title}\n{prefix} "{sql.replace("<study_uid>", study)}"'
        for title, sql in COMPLIANCE_QUERIES
    ]


def demo_command(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Demo directory (emptied first).",
            file_okay=False,
            rich_help_panel=_OUTPUT,
        ),
    ] = DEFAULT_DEMO_DIR,
    report: Annotated[
        Path, typer.Option(help="Where to write the HTML report.", rich_help_panel=_OUTPUT)
    ] = DEFAULT_REPORT,
    progress: Annotated[bool, typer.Option(help="Show progress.", rich_help_panel=_OUTPUT)] = True,
    days: Annotated[
        int, typer.Option(min=1, help="Days to simulate.", rich_help_panel=_CLINIC)
    ] = 90,
    sites: Annotated[
        int, typer.Option(min=1, help="Number of sites.", rich_help_panel=_CLINIC)
    ] = 3,
    studies_per_day: Annotated[
        float,
        typer.Option(min=1, help="Mean studies per site and day.", rich_help_panel=_CLINIC),
    ] = 60.0,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.", rich_help_panel=_CLINIC)] = 7,
    drift_site: Annotated[
        str,
        typer.Option(
            help="Site whose ICH detector drifts ('none': no drift).", rich_help_panel=_DRIFT
        ),
    ] = "site-02",
    drift_day: Annotated[
        int, typer.Option(min=0, help="First drifted day (0-based).", rich_help_panel=_DRIFT)
    ] = 60,
    drift_kind: Annotated[
        DriftKind,
        typer.Option(
            metavar="<kind>",
            help=f"How it drifts: {' or '.join(k.value for k in DriftKind)}.",
            rich_help_panel=_DRIFT,
        ),
    ] = DriftKind.SPECIFICITY_DROP,
    drift_magnitude: Annotated[
        float,
        typer.Option(help="Specificity lost, or score points added.", rich_help_panel=_DRIFT),
    ] = 0.15,
    config: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Governance settings (TOML).")
    ] = None,
) -> None:
    """Run the whole pipeline embedded: simulate, replay into chDB, report.

    Everything lands under .imgov/ (rebuilt on every run): the events, the ground truth,
    the audit tables in chDB and report.html, a self-contained governance report.
    """
    started = time.perf_counter()
    options = DemoOptions(
        workdir=directory,
        days=days,
        sites=sites,
        studies_per_day=studies_per_day,
        seed=seed,
        drift_site=None if drift_site.lower() == "none" else drift_site,
        drift_day=drift_day,
        drift_kind=drift_kind,
        drift_magnitude=drift_magnitude,
        config=config,
    )
    drift = (
        f"; from day {drift_day} the ICH detector at {options.drift_site} drifts "
        f"({drift_kind.value} {drift_magnitude:g})"
        if options.drift_site
        else ""
    )
    _err.print(
        f"[bold]imgov demo[/]: {days} days x {sites} sites x ~{studies_per_day:g} studies/day, "
        f"ICH + PE detectors{drift}"
    )
    try:
        run = _run(options, progress)
        clock = time.perf_counter()
        data = build_report_for(
            options.chdb_path,
            report,
            generated_at_ms=time.time_ns() // 1_000_000,
            config=config,
        )
        run.timings["report"] = time.perf_counter() - clock
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except OSError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc

    _out.print()
    rules, _ = load_policy_rules(demo_settings(config).breach_policy)
    print_summary(data, policy=rules)
    _out.print()
    _out.print("[bold]Compliance queries[/] (read-only, on the demo's audit tables):")
    for text in _queries(options.chdb_path, data):
        _out.print(text, soft_wrap=True)
    total = time.perf_counter() - started
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run.timings.items())
    _out.print()
    _out.print(
        f"[bold green]report:[/] {report}   [bold green]audit tables:[/] {options.chdb_path}   "
        f"({run.replay.events:,} events; {steps}; {total:.1f} s in all)"
    )


def _run(options: DemoOptions, progress: bool) -> DemoRun:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not progress,
    ) as bar:
        task = bar.add_task("simulating", total=None)

        def on_step(name: str) -> None:
            if name == "replay":
                events = _count_lines(options.events_path)
                bar.update(task, description="replaying into chDB", total=events, completed=0)

        return run_demo(options, on_step=on_step, on_progress=lambda n: bar.advance(task, n))


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return None
