"""``imgov replay``: event files through the governance core, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.errors import ImgovError
from sinks.base import Sink
from sinks.jsonl import JsonLinesSink
from sinks.null import NullSink
from sinks.tee import TeeSink
from streams.governance import (
    build_processor,
    build_pseudonymiser,
    build_validator,
    checkpoint_keyring,
    load_settings,
    wall_clock_ms,
)
from streams.replay.anchor import write_replay_checkpoint
from streams.replay.driver import DEFAULT_CHUNK_SIZE, ReplayStats, replay
from streams.replay.parallel import replay_parallel

__all__ = ["replay_command"]

_console = Console(stderr=True)


def _count_lines(paths: list[Path]) -> int | None:
    # Only JSON Lines can be sized cheaply ahead of time; a bar needs a total.
    total = 0
    for path in paths:
        if path.suffix == ".avro":
            return None
        with path.open("rb") as handle:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return total


def _summary(stats: ReplayStats, seconds: float) -> Table:
    table = Table(title="replay", show_header=False, title_justify="left")
    rate = stats.events / seconds if seconds > 0 else 0.0
    rows = [
        ("files", stats.files),
        ("events accepted", stats.events),
        ("inputs rejected", stats.rejected),
        ("lineage revisions", stats.lineage),
        ("KPI values", stats.kpis),
        ("breaches", stats.breaches),
        ("review candidates", stats.reviews),
        ("dead letters", stats.dead_letters),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    for reason, count in sorted(stats.rejected_by_reason.items()):
        table.add_row(f"  {reason}", f"{count:,}")
    # Always shown, zeros too: a replay that left nothing out says so.
    late = ", ".join(f"{size} {count:,}" for size, count in stats.too_late.items())
    table.add_row("late KPI contributions", late or "0")
    table.add_row("wall time", f"{seconds:.1f} s ({rate:,.0f} events/s)")
    return table


def replay_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(exists=True, dir_okay=False, help="JSON Lines or Avro files."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write lineage, kpi, breach, review and dlq .jsonl files to this folder."
        ),
    ] = None,
    chdb: Annotated[
        Path | None, typer.Option("--chdb", help="Write the audit tables to this chDB directory.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", exists=True, help="Governance settings (TOML).")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the public demo pseudonymisation key.")
    ] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="Events joined as one batch.")] = (
        DEFAULT_CHUNK_SIZE
    ),
    current: Annotated[
        bool,
        typer.Option(
            "--current/--final-only",
            help="Also emit current (not yet final) KPI values, as a live worker does.",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    parallel: Annotated[
        bool,
        typer.Option(
            "--parallel/--one-process",
            help="Compute the KPI windows in a second process (two cores); same outputs.",
        ),
    ] = True,
) -> None:
    """Replay event files through the governance core and write every output.

    Reads every file at once, merged by event time; each file is read in its own order,
    so one file per source system or per partition gives the same results as one merged
    file. Joins lineage, computes KPI windows and breaches, and at the end of input closes
    every window as final. Invalid inputs become dead letters: the replay never stops on
    bad input. Contributions too late for a closed window are counted in the summary and
    written as LATE_AFTER_WINDOW_CLOSED dead letters.
    """
    try:
        settings = load_settings(config, demo=demo)
        if not current:
            # Offline, event time runs far ahead of any reader: provisional values
            # would only add volume. Final values are the same either way.
            kpi = settings.kpi.model_copy(update={"emit_interval_ms": None})
            settings = settings.model_copy(update={"kpi": kpi})
        validator = build_validator(settings)
        sinks: list[Sink] = []
        if out is not None:
            sinks.append(JsonLinesSink(out))
        chdb_sink = None
        if chdb is not None:
            from sinks.chdb import ChdbSink  # chDB loads a large library: only when asked

            pseudonymiser = build_pseudonymiser(settings)
            keyring = checkpoint_keyring(settings)  # refused now, not after the run
            chdb_sink = ChdbSink(
                chdb, clean_event=pseudonymiser.pseudonymise_event, background=True
            )
            sinks.append(chdb_sink)
        sink: Sink = TeeSink(sinks) if sinks else NullSink()
        if settings.demo:
            _console.print("[yellow]demo mode: pseudonyms use the public demo key[/yellow]")
        started = time.perf_counter()
        total = _count_lines(inputs) if progress else None
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            TextColumn("{task.completed:,} events"),
            TimeElapsedColumn(),
            console=_console,
            transient=True,
            disable=not progress,
        ) as bar:
            task = bar.add_task("replay", total=total)
            if parallel:
                stats = replay_parallel(
                    inputs,
                    settings,
                    sinks or [NullSink()],
                    validator,
                    record_events=chdb is not None,
                    chunk_size=chunk_size,
                    on_progress=lambda n: bar.advance(task, n),
                    collect_heads=chdb_sink is not None,
                )
            else:
                stats = replay(
                    inputs,
                    build_processor(settings),
                    sink,
                    validator,
                    record_events=chdb is not None,
                    chunk_size=chunk_size,
                    on_progress=lambda n: bar.advance(task, n),
                    collect_heads=chdb_sink is not None,
                )
        if chdb_sink is not None:
            # The audit checkpoint anchors the chain heads of the run (DESIGN §8).
            write_replay_checkpoint(stats, chdb_sink.backend, keyring, wall_clock_ms())
        sink.close()
    except ImgovError as exc:
        _console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _console.print(_summary(stats, time.perf_counter() - started))
