"""``imgov simulate``: generate a synthetic multi-site clinic and write or produce it.

Examples::

    imgov simulate --out events.jsonl --truth truth.jsonl
    imgov simulate --days 90 --seed 7 --drift-site 2 --drift-day 45 --out drift.jsonl
    imgov simulate --unanswered-channel MOBILE_PUSH --bootstrap 127.0.0.1:19092 --rate 1000
    imgov simulate --days 2 --native native/ --emit hl7 --emit dicom-sr
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from schemas.codec import Codec
from schemas.events import AlertChannel, Event, EventType
from schemas.registry import registry_from_environ
from schemas.units import DAY_MS
from streams.runtime.settings import KafkaConfigError, load_kafka_settings
from streams.simulate.config import DriftKind, SimulationConfig
from streams.simulate.output import OUTPUT_SUFFIXES, NativeFormat, write_events, write_truth
from streams.simulate.overrides import ConfigError, Overrides, build_config, parse_assignments
from streams.simulate.producer import Encoder, ProduceError, produce_to_kafka
from streams.simulate.run import SimulationRun, run_simulation

__all__ = ["simulate"]

_SCENARIOS = "Scenarios"
_OUTPUT = "Output"
_CLINIC = "Clinic"
_RATES = "Rates"


def _option(
    help: str, panel: str | None = None, *names: str, default: str | None = None, **extra: Any
) -> Any:
    """A Typer option whose real default lives in ``SimulationConfig``, shown as text."""
    return typer.Option(
        *names,
        help=help,
        rich_help_panel=panel,
        show_default=default if default is not None else False,
        **extra,
    )


def simulate(
    out: Annotated[
        Path | None,
        _option("Write events in delivery order: FILE.jsonl or FILE.avro.", _OUTPUT, "--out", "-o"),
    ] = None,
    truth: Annotated[
        Path | None, _option("Write the ground truth, one JSON line per study.", _OUTPUT)
    ] = None,
    native: Annotated[
        Path | None,
        _option(
            "Write the events as hospital systems send them into DIR, for imgov gateway: "
            "reports as HL7 v2 ORU^R01 (MLLP frames), alerts as FHIR R4 Communication, "
            "inferences as DICOM SR (TID 1500).",
            _OUTPUT,
            "--native",
            metavar="DIR",
        ),
    ] = None,
    emit: Annotated[
        list[NativeFormat] | None,
        _option(
            "With --native: only these formats (hl7, fhir, dicom-sr); repeatable.",
            _OUTPUT,
            default="all three",
            metavar="<format>",
        ),
    ] = None,
    bootstrap: Annotated[
        str | None,
        _option(
            "Produce to Kafka at HOST:PORT (Confluent-framed Avro); TLS and SASL from"
            " IMGOV_KAFKA_* (environment and files).",
            _OUTPUT,
        ),
    ] = None,
    rate: Annotated[
        float | None,
        _option("Produce at most N events/s (latency benchmarks).", _OUTPUT, min=0.001),
    ] = None,
    config_file: Annotated[
        Path | None,
        _option(
            "JSON or TOML file of SimulationConfig fields; options override it.",
            _CLINIC,
            "--config",
        ),
    ] = None,
    dump_config: Annotated[
        bool,
        _option("Print the effective configuration as JSON and exit.", _CLINIC, "--dump-config"),
    ] = False,
    seed: Annotated[int | None, _option("Random seed.", _CLINIC, default="0", min=0)] = None,
    days: Annotated[int | None, _option("Days to simulate.", _CLINIC, default="30", min=1)] = None,
    sites: Annotated[int | None, _option("Number of sites.", _CLINIC, default="3", min=1)] = None,
    studies_per_day: Annotated[
        float | None, _option("Mean studies per site and day.", _CLINIC, default="100", min=0)
    ] = None,
    start: Annotated[
        str | None,
        _option(
            "Start of day 0: ISO date or date-time, UTC unless a zone is given.",
            _CLINIC,
            default="2026-01-01",
        ),
    ] = None,
    algorithms: Annotated[
        str | None,
        _option(
            "Comma-separated algorithm names or finding codes to deploy.", _CLINIC, default="ICH,PE"
        ),
    ] = None,
    prevalence: Annotated[
        list[str] | None, _option("FINDING=P, repeatable (e.g. ICH=0.07).", _RATES)
    ] = None,
    sensitivity: Annotated[
        list[str] | None, _option("FINDING=P, repeatable (e.g. PE=0.9).", _RATES)
    ] = None,
    specificity: Annotated[list[str] | None, _option("FINDING=P, repeatable.", _RATES)] = None,
    failure_rate: Annotated[
        list[str] | None, _option("FINDING=P inference failures, repeatable.", _RATES)
    ] = None,
    duplicate_rate: Annotated[
        float | None, _option("Share of events delivered twice.", _RATES, default="0.01")
    ] = None,
    late_rate: Annotated[
        float | None, _option("Share of events delivered hours late.", _RATES, default="0.02")
    ] = None,
    drop_rate: Annotated[
        float | None, _option("Share of events lost in transit.", _RATES, default="0")
    ] = None,
    addendum_rate: Annotated[
        float | None, _option("Share of final reports with an addendum.", _RATES, default="0.011")
    ] = None,
    drift_site: Annotated[
        str | None, _option("Site that drifts: number or id (2 or site-02).", _SCENARIOS)
    ] = None,
    drift_day: Annotated[
        int | None, _option("First drifted day (0-based).", _SCENARIOS, min=0)
    ] = None,
    drift_kind: Annotated[
        DriftKind | None,
        _option(
            f"How it drifts: {' or '.join(k.value for k in DriftKind)}.",
            _SCENARIOS,
            default="specificity_drop",
            metavar="<kind>",
        ),
    ] = None,
    drift_magnitude: Annotated[
        float | None,
        _option("Specificity lost, or score points added.", _SCENARIOS, default="0.15"),
    ] = None,
    drift_finding: Annotated[
        str | None,
        _option("Only the algorithm of this finding code drifts.", _SCENARIOS, default="all"),
    ] = None,
    scanner_change_site: Annotated[
        str | None, _option("Site that replaces its scanner: number or id.", _SCENARIOS)
    ] = None,
    scanner_change_day: Annotated[
        int | None, _option("Day the new scanner starts (0-based).", _SCENARIOS, min=0)
    ] = None,
    scanner_manufacturer: Annotated[
        str | None,
        _option("The new scanner's manufacturer.", _SCENARIOS, default="CANON MEDICAL SYSTEMS"),
    ] = None,
    scanner_shift: Annotated[
        float | None, _option("Score shift on the new scanner.", _SCENARIOS, default="0.08")
    ] = None,
    unanswered_channel: Annotated[
        list[AlertChannel] | None,
        _option(
            "Alerts on this channel are never answered (they expire); repeatable. Channels: "
            f"{', '.join(c.value for c in AlertChannel)}.",
            _SCENARIOS,
            metavar="<channel>",
        ),
    ] = None,
    quiet: Annotated[bool, _option("No summary, no progress bar.", None, "--quiet", "-q")] = False,
) -> None:
    """Generate a synthetic multi-site clinic: AI inferences, alerts and reports.

    The same options always give byte-identical output. Events are written (or produced)
    in delivery order: out of event-time order, some late, some duplicated.
    """
    console = Console(stderr=True, quiet=quiet)
    try:
        overrides = Overrides(
            seed=seed, days=days, sites=sites, studies_per_day=studies_per_day, start=start,
            algorithms=tuple(algorithms.split(",")) if algorithms else (),
            prevalence=parse_assignments(prevalence or (), "--prevalence"),
            sensitivity=parse_assignments(sensitivity or (), "--sensitivity"),
            specificity=parse_assignments(specificity or (), "--specificity"),
            failure_rate=parse_assignments(failure_rate or (), "--failure-rate"),
            drift_site=drift_site, drift_day=drift_day, drift_kind=drift_kind,
            drift_magnitude=drift_magnitude, drift_finding=drift_finding,
            scanner_change_site=scanner_change_site, scanner_change_day=scanner_change_day,
            scanner_manufacturer=scanner_manufacturer, scanner_shift=scanner_shift,
            unanswered_channels=tuple(unanswered_channel or ()),
            duplicate_rate=duplicate_rate, late_rate=late_rate, drop_rate=drop_rate,
            addendum_rate=addendum_rate,
        )  # fmt: skip
        config = build_config(config_file, overrides)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if out is not None and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise typer.BadParameter(f"{out}: use FILE.jsonl or FILE.avro", param_hint="--out")
    if emit and native is None:
        raise typer.BadParameter("choose the directory with --native", param_hint="--emit")
    if rate is not None and bootstrap is None:
        message = "only producing is throttled; add --bootstrap"
        raise typer.BadParameter(message, param_hint="--rate")
    if dump_config:
        typer.echo(config.model_dump_json(indent=2))
        return

    end_ms = config.start_ms + config.days * DAY_MS
    if end_ms > time.time() * 1000:
        console.print(
            "[yellow]warning:[/yellow] the simulated days reach into the future; the pipeline "
            "rejects events more than 15 min ahead of its clock (choose an earlier --start)"
        )
    began = time.perf_counter()
    run = run_simulation(config)
    generated_s = time.perf_counter() - began
    events = [d.event for d in run.deliveries]
    # The run lives until the process ends: keep the collector from re-traversing it on
    # every full collection while the writers allocate (writing gets about 30% faster).
    gc.freeze()

    began = time.perf_counter()
    try:
        if out is not None:
            write_events(out, events)
        if truth is not None:
            write_truth(truth, run.truths)
        if native is not None:
            # highdicom and pydicom take a third of a second to import: only here.
            from streams.simulate.native import write_native

            write_native(native, events, tuple(emit or NativeFormat))
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    written_s = time.perf_counter() - began

    produced_s = 0.0
    if bootstrap is not None:
        began = time.perf_counter()
        try:
            asyncio.run(_produce(bootstrap, events, rate, console))
        except (ProduceError, KafkaConfigError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
        produced_s = time.perf_counter() - began

    console.print(_summary(config, run, generated_s, written_s, produced_s))


def _default_encoder() -> Encoder:
    """Confluent-framed Avro, schema ids from the registry chosen by the environment."""
    return Codec(registry_from_environ(os.environ)).encode


async def _produce(
    bootstrap: str, events: list[Event], rate: float | None, console: Console
) -> None:
    security = load_kafka_settings(bootstrap=bootstrap).security()
    encode = _default_encoder()
    columns = (
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("produce", total=len(events), speed="")
        began = time.perf_counter()
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            elapsed = time.perf_counter() - began
            speed = f"{done / elapsed:,.0f} ev/s" if elapsed > 0 else ""
            progress.update(task, advance=count, speed=speed)

        await produce_to_kafka(
            bootstrap, events, encode, rate=rate, on_progress=advance, security=security
        )


def _summary(
    config: SimulationConfig, run: SimulationRun, generated_s: float, written_s: float,
    produced_s: float,
) -> Table:  # fmt: skip
    stats = run.stats
    algorithm_rows = [a for t in run.truths for a in t.algorithms]
    results = Counter(a.ai_result.value if a.ai_result else "NOT_ROUTED" for a in algorithm_rows)
    alerts = Counter(a.alert_final_state.value for a in algorithm_rows if a.alert_final_state)
    table = Table(title=f"imgov simulate (seed {config.seed})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("sites x days", f"{config.sites} x {config.days}")
    table.add_row("studies", f"{stats.studies:,}")
    table.add_row("AI results", ", ".join(f"{k} {v:,}" for k, v in sorted(results.items())))
    table.add_row(
        "alerts by final state", ", ".join(f"{k} {v:,}" for k, v in sorted(alerts.items()))
    )
    drifted = sum(1 for t in run.truths if any(a.drifted for a in t.algorithms))
    if drifted:
        table.add_row("drifted studies", f"{drifted:,}")
    for event_type in EventType:
        table.add_row(
            f"{event_type.value} events",
            f"{stats.generated[event_type]:,} generated, {stats.delivered[event_type]:,} delivered",
        )
    table.add_row("delivered in total", f"{stats.total_delivered:,}")
    table.add_row("duplicates", f"{stats.duplicates:,}")
    table.add_row("dropped", f"{stats.dropped:,}")
    table.add_row("late (hours)", f"{stats.late:,}")
    table.add_row("out of order within a study", f"{stats.out_of_order:,}")
    generated = sum(stats.generated.values())
    table.add_row(
        "generation",
        f"{generated_s:.2f} s ({generated / generated_s if generated_s else 0:,.0f} ev/s)",
    )
    if written_s:
        table.add_row("writing", f"{written_s:.2f} s")
    if produced_s:
        table.add_row("producing", f"{produced_s:.2f} s")
    return table
