"""``imgov status``: the whole live pipeline on one screen, for a person at a terminal.

``streams.runtime.status`` gathers (Kafka, the workers' metrics endpoints, the audit
database); this module only draws a ``PipelineStatus`` with rich, once, or again every
``--watch`` seconds, or prints it as JSON. A source that did not answer is drawn as
"not reachable" with the reason, never as a traceback, and makes the exit status 1.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from schemas.errors import ImgovError
from schemas.units import HOUR_MS, MISSING, format_duration, format_minute, utc
from sinks.clickhouse.settings import ClickHouseSettings
from streams.cli.options import BootstrapOption, DatabaseOption
from streams.runtime.settings import load_kafka_settings, load_worker_settings
from streams.runtime.status import (
    DEAD_LETTER_WINDOW_MS,
    AuditStatus,
    GroupStatus,
    PipelineStatus,
    StatusRequest,
    WorkerReading,
    gather_status,
)
from streams.topics import KPI_GROUP_SUFFIX

__all__ = [
    "DEFAULT_METRICS_URL",
    "MAX_BREACHES_SHOWN",
    "MAX_LAGGING_SHOWN",
    "render_status",
    "status_command",
]

DEFAULT_METRICS_URL = "http://127.0.0.1:9810/metrics"
"""Where a worker serves its metrics by default (``streams.metrics``)."""

MAX_BREACHES_SHOWN = 15
"""More open breaches than this are counted, not listed (``--json`` lists them all)."""

MAX_LAGGING_SHOWN = 6
"""Lagging partitions listed per topic; the rest are counted."""

_DEAD_LETTER_WINDOW = (
    "hour" if DEAD_LETTER_WINDOW_MS == HOUR_MS else format_duration(DEAD_LETTER_WINDOW_MS)
)


# --- rendering (pure: a status in, renderables out) -------------------------------------


def render_status(status: PipelineStatus) -> RenderableType:
    """Returns the screen of ``status``: a header, a panel per consumer group, the
    workers, the audit database, and what could not be reached."""
    now = status.taken_at_ms
    header = Text.assemble(
        ("imgov status", "bold"),
        f"  {utc(now).strftime('%Y-%m-%d %H:%M:%S')} UTC  ·  Kafka {status.bootstrap}",
        f"  ·  namespace {status.namespace!r}" if status.namespace else "",
    )
    parts: list[RenderableType] = [header]
    kafka_errors = [e for e in status.errors if e.source == "kafka"]
    if kafka_errors:
        parts.append(
            Panel(
                Group(*(_not_reachable(e.reason) for e in kafka_errors)),
                title=f"Kafka {escape(status.bootstrap)}",
                title_align="left",
                border_style="red",
            )
        )
    parts.extend(_group_panel(group) for group in status.groups)
    if status.workers:
        parts.append(_workers_panel(status.workers, now))
    parts.append(_audit_panel(status))
    parts.append(_footer(status))
    return Group(*parts)


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def _not_reachable(reason: str) -> Text:
    return Text.assemble(("not reachable: ", "bold red"), reason)


def _group_panel(group: GroupStatus) -> Panel:
    title = f"Consumer group [bold]{escape(group.group_id)}[/]"
    if not group.exists:
        body_text = Text("no such group: no member has joined it and it committed nothing")
        return Panel(body_text, title=title, title_align="left", border_style="yellow")
    colour = "green" if group.state == "Stable" else "yellow"
    title += f": [{colour}]{escape(group.state)}[/], {len(group.members)} member(s)"
    if group.partitions:
        title += f", lag {group.lag:,}"
    body: list[RenderableType] = []
    if group.members:
        members = _table()
        for column in ("member", "host", "client id", "assigned partitions"):
            members.add_column(column)
        for m in group.members:
            members.add_row(
                Text(m.instance_id or "(dynamic)"),
                Text(m.host),
                Text(m.client_id),
                Text(_partition_list(m.assigned) or "none"),
            )
        body.extend((members, Text("")))
    if group.partitions:
        lag = _table()
        lag.add_column("topic")
        for column in ("partitions", "committed", "end", "lag"):
            lag.add_column(column, justify="right")
        lag.add_column("lagging partitions (lag)")
        for t in group.topics():
            lagging = ", ".join(f"p{p} ({n:,})" for p, n in t.lagging[:MAX_LAGGING_SHOWN])
            if len(t.lagging) > MAX_LAGGING_SHOWN:
                lagging += f" +{len(t.lagging) - MAX_LAGGING_SHOWN} more"
            if t.unknown:
                lagging = (lagging + "; " if lagging else "") + f"{t.unknown} without end offset"
            lag.add_row(
                Text(t.topic),
                f"{t.partitions}",
                "none" if t.committed is None else f"{t.committed:,}",
                f"{t.end:,}",
                f"[bold yellow]{t.lag:,}[/]" if t.lag else "0",
                Text(lagging or "caught up"),
            )
        body.append(lag)
    else:
        body.append(Text("no committed offsets, and none of the worker's topics exist"))
    return Panel(Group(*body) if body else Text(""), title=title, title_align="left")


def _partition_list(assigned: tuple[tuple[str, int], ...]) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in assigned:
        by_topic.setdefault(topic, []).append(partition)
    return "\n".join(f"{t}: {_ranges(ps)}" for t, ps in sorted(by_topic.items()))


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _ago(now_ms: int, then_ms: int | None) -> str:
    if then_ms is None:
        return MISSING
    return f"{format_duration(max(now_ms - then_ms, 0))} ago"


def _workers_panel(workers: tuple[WorkerReading, ...], now_ms: int) -> Panel:
    title = "Workers (metrics endpoints)"
    if not any(w.reachable for w in workers):
        lines = [Text.assemble(f"{w.url}: ", _not_reachable(w.error or "")) for w in workers]
        return Panel(Group(*lines), title=title, title_align="left", border_style="red")
    # One column per endpoint, one row per measure: a few workers fit an 80-column screen.
    table = _table()
    table.add_column("")
    for w in workers:
        table.add_column(Text(w.url))
    rows: list[tuple[str, list[RenderableType]]] = [
        ("process", [_process(w) for w in workers]),
        ("watermark lag", [_per_key(w, w.watermark_lag_ms, format_duration) for w in workers]),
        ("last commit", [_value(w, _ago(now_ms, w.last_commit_ms)) for w in workers]),
        ("sink", [_sink_state(w) for w in workers]),
        (
            "last flush",
            [_per_key(w, w.last_flush_ms, lambda ms: _ago(now_ms, ms)) for w in workers],
        ),
        ("open studies", [_value(w, _count(w.open_studies)) for w in workers]),
        ("memory (RSS)", [_value(w, _mebibytes(w.resident_memory_bytes)) for w in workers]),
    ]
    for label, cells in rows:
        table.add_row(Text(label, style="bold"), *cells)
    return Panel(table, title=title, title_align="left")


def _process(w: WorkerReading) -> RenderableType:
    if w.error is not None:
        return _not_reachable(w.error)
    return Text(f"{w.process or 'unknown'} {w.version or ''}".strip())


def _value(w: WorkerReading, text: str) -> RenderableType:
    return Text("" if not w.reachable else text)


def _per_key(
    w: WorkerReading, values: Mapping[str, int], fmt: Callable[[int], str]
) -> RenderableType:
    if not w.reachable:
        return Text("")
    if not values:
        return Text(MISSING)
    return Text("\n".join(f"{key}: {fmt(v)}" for key, v in values.items()))


def _sink_state(w: WorkerReading) -> RenderableType:
    if not w.reachable:
        return Text("")
    if not w.backpressure:
        return Text(f"{MISSING} (no flush yet)")
    text = Text()
    for i, (sink, holding) in enumerate(w.backpressure.items()):
        if i:
            text.append("\n")
        text.append(f"{sink}: ")
        text.append(*(("holding offsets", "bold red") if holding else ("ok", "green")))
    return text


def _count(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def _mebibytes(n: int | None) -> str:
    return MISSING if n is None else f"{n / 2**20:,.0f} MiB"


def _audit_panel(status: PipelineStatus) -> Panel:
    audit = status.audit
    errors = [e for e in status.errors if e.source == "clickhouse"]
    if audit is None:
        reason = errors[0].reason if errors else "not asked"
        return Panel(
            _not_reachable(reason),
            title=f"Audit database (ClickHouse {escape(errors[0].where) if errors else '?'})",
            title_align="left",
            border_style="red",
        )
    return Panel(
        Group(_dead_letters(audit), Text(""), _breaches(audit)),
        title=f"Audit database (ClickHouse {escape(audit.where)})",
        title_align="left",
    )


def _dead_letters(audit: AuditStatus) -> RenderableType:
    total = sum(d.count for d in audit.dead_letters)
    heading = Text.assemble(
        (f"Dead letters, last {_DEAD_LETTER_WINDOW}: ", "bold"),
        (f"{total:,}", "bold yellow" if total else "green"),
    )
    if not audit.dead_letters:
        return heading
    table = _table()
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("newest (UTC)")
    for d in audit.dead_letters:
        table.add_row(Text(d.reason), f"{d.count:,}", format_minute(d.last_ms))
    return Group(heading, table)


def _breaches(audit: AuditStatus) -> RenderableType:
    breaches = audit.open_breaches
    critical = sum(1 for b in breaches if b.severity == "CRITICAL")
    heading = Text.assemble(
        ("Open breaches: ", "bold"),
        (f"{len(breaches):,}", "bold red" if critical else "bold yellow" if breaches else "green"),
        f" ({critical} critical)" if breaches else "",
    )
    if not breaches:
        return heading
    table = _table()
    # Severity and rule never wrap (a person searches for the rule id); the rest folds,
    # so a narrow terminal wraps the rows but hides nothing.
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("site · model · finding", overflow="fold")
    table.add_column("window (UTC)", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for b in breaches[:MAX_BREACHES_SHOWN]:
        table.add_row(
            Text(b.severity, style="bold red" if b.severity == "CRITICAL" else "yellow"),
            Text(b.rule_id),
            Text(f"{b.site_id} · {b.algorithm_name} {b.algorithm_version} · {b.finding_code}"),
            Text(f"{b.window_size} to {format_minute(b.window_end_ms)}"),
            Text(_breach_value(b.value, b.threshold)),
        )
    more = len(breaches) - MAX_BREACHES_SHOWN
    if more <= 0:
        return Group(heading, table)
    note = f"… and {more} more (imgov status --json, or the view breaches_open)"
    return Group(heading, table, Text(note, style="dim"))


def _breach_value(value: float | None, threshold: float | None) -> str:
    shown = MISSING if value is None else f"{value:.4g}"
    return shown if threshold is None else f"{shown} (limit {threshold:.4g})"


def _footer(status: PipelineStatus) -> RenderableType:
    # The reasons are in the panels above; this line is the verdict (and the exit status).
    if status.ok:
        return Text("✓ every source answered", style="green")
    names = ", ".join(sorted({f"{e.source} {e.where}" for e in status.errors}))
    return Text(f"✗ not reachable: {names}", style="bold red")


# --- the command ----------------------------------------------------------------------


def status_command(
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            metavar="GROUP",
            help="A consumer group to show (repeat for more) [default: the worker's app id, "
            "and its -kpi group if that exists].",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            metavar="PREFIX",
            help="The workers' topic namespace [default: the worker's setting].",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            metavar="URL",
            help="A worker's metrics endpoint (repeat for more) [default: port 9810 on 127.0.0.1].",
            show_default=False,
        ),
    ] = None,
    no_metrics: Annotated[
        bool, typer.Option("--no-metrics", help="Read no metrics endpoint.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The worker's TOML settings file, for its app id and namespace.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    bootstrap: BootstrapOption = None,
    database: DatabaseOption = None,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            metavar="SECONDS",
            min=0.5,
            help="Redraw every this many seconds until Ctrl-C.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the gathered status as JSON instead.")
    ] = False,
    timeout_s: Annotated[
        float,
        typer.Option(
            "--timeout", metavar="SECONDS", min=0.5, help="How long each source may take to answer."
        ),
    ] = 5.0,
) -> None:
    """Show the live pipeline on one screen.

    Consumer groups (members, their partitions, committed and end offsets, lag) as the
    brokers see them; each worker's watermark lag, last commit, sink state and last
    flush from its metrics endpoint; dead letters of the last hour and the open
    breaches from the audit database (IMGOV_CLICKHOUSE_*).

    Exit status: 0 when Kafka, every metrics endpoint and ClickHouse answered; 1 when
    any did not (the screen, or the JSON's errors, says which and why); 2 for invalid
    options or settings. With --watch, the status of the last redraw.
    """
    if watch is not None and as_json:
        typer.echo("imgov status: --watch and --json cannot be combined", err=True)
        raise typer.Exit(2)
    try:
        worker = load_worker_settings(config)
        kafka = load_kafka_settings(bootstrap=bootstrap)
        clickhouse = ClickHouseSettings()
    except (ImgovError, ValidationError) as exc:
        typer.echo(f"imgov status: {exc}", err=True)
        raise typer.Exit(2) from exc
    # Every failure is drawn with its reason; the clients' own log records (a warning
    # with a traceback per refused connection) would only bury the screen.
    for client in ("clickhouse_driver", "kafka"):
        logging.getLogger(client).setLevel(logging.CRITICAL)
    if database:
        clickhouse = clickhouse.model_copy(update={"database": database})
    kpi_group = worker.app_id + KPI_GROUP_SUFFIX
    request = StatusRequest(
        bootstrap=kafka.bootstrap,
        groups=tuple(groups) if groups else (worker.app_id, kpi_group),
        optional_groups=frozenset() if groups else frozenset({kpi_group}),
        namespace=worker.topic_namespace if namespace is None else namespace,
        metrics_urls=() if no_metrics else tuple(metrics or (DEFAULT_METRICS_URL,)),
        clickhouse=clickhouse,
        timeout_s=timeout_s,
        security=kafka.security(),
    )
    status = gather_status(request)
    if as_json:
        typer.echo(json.dumps(status.to_json(), indent=2, ensure_ascii=False))
    elif watch is None:
        Console(highlight=False).print(render_status(status))
    else:
        status = _watch(request, status, watch)
    if not status.ok:
        raise typer.Exit(1)


def _watch(request: StatusRequest, status: PipelineStatus, every_s: float) -> PipelineStatus:
    """Redraws until Ctrl-C; returns the last status."""
    console = Console(highlight=False)
    with Live(render_status(status), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(every_s)
                status = gather_status(request)
                live.update(render_status(status), refresh=True)
        except KeyboardInterrupt:
            pass
    return status
