"""``imgov kpi show``: KPI values from the audit database, filtered.

Reads the final value of every window (view ``kpi_final``, the default) or every value
ever emitted, current and final, with its revisions (table ``kpi_values``, ``--all``),
from ``--chdb PATH`` or the ClickHouse server of ``IMGOV_CLICKHOUSE_*``, like
``imgov query``.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from schemas.units import (
    DAY_MS,
    MISSING,
    format_day,
    format_duration,
    format_minute,
    format_percent,
)
from streams.cli.options import ChdbOption, DatabaseOption, open_backend
from streams.core.kpi.catalogue import KPI_BY_NAME, KpiKind
from streams.core.kpi.windows import WINDOW_SPEC_BY_NAME

__all__ = ["kpi_app", "kpi_query"]

kpi_app = typer.Typer(help="KPI values: final windows and their revisions.", no_args_is_help=True)

_err = Console(stderr=True)

_COLUMNS = (
    "kpi",
    "window_size",
    "site_id",
    "algorithm_name",
    "algorithm_version",
    "finding_code",
    "window_start_ms",
    "window_end_ms",
    "numerator",
    "denominator",
    "value",
    "ci_low",
    "ci_high",
    "p50",
    "p90",
    "p_value",
    "revision",
)


def kpi_query(
    *,
    kpi: str | None = None,
    site: str | None = None,
    model: str | None = None,
    version: str | None = None,
    window: str | None = None,
    final: bool = True,
    limit: int = 50,
) -> tuple[str, dict[str, object]]:
    """Returns the SQL and parameters of ``kpi show`` (latest windows first).

    ``model`` matches an algorithm name or a finding code; ``version`` None means all
    versions rolled up (``*``), ``"any"`` every version row.
    """
    conditions: list[str] = []
    params: dict[str, object] = {"limit": limit}
    if kpi is not None:
        conditions.append("kpi = %(kpi)s")
        params["kpi"] = kpi
    if site is not None:
        conditions.append("site_id = %(site)s")
        params["site"] = site
    if model is not None:
        conditions.append("(algorithm_name = %(model)s OR finding_code = %(model)s)")
        params["model"] = model
    if version is None:
        conditions.append("algorithm_version = '*'")
    elif version != "any":
        conditions.append("algorithm_version = %(version)s")
        params["version"] = version
    if window is not None:
        conditions.append("window_size = %(window)s")
        params["window"] = window
    columns = ", ".join(_COLUMNS)
    if final:
        source = f"SELECT {columns}, 1 AS final FROM kpi_final"
    else:
        source = f"SELECT {columns}, final FROM kpi_values"
    where = " AND ".join(conditions) or "1"
    sql = (
        f"{source} WHERE {where} ORDER BY window_start_ms DESC, kpi, window_size, site_id, "
        "algorithm_name, algorithm_version, revision DESC, final DESC LIMIT %(limit)s"
    )
    return sql, params


def _when(ms: int) -> str:
    return format_day(ms) if ms % DAY_MS == 0 else format_minute(ms)


def _window(row: dict[str, Any]) -> str:
    # A day or an hour is named by its start; longer windows show both ends, [start, end).
    start, end = row["window_start_ms"], row["window_end_ms"]
    if end - start <= DAY_MS:
        return _when(start)
    return f"{_when(start)} → {_when(end)}"


def _value(row: dict[str, Any]) -> str:
    spec = KPI_BY_NAME.get(row["kpi"])
    value = row["value"]
    if value is None:
        return MISSING
    if spec is not None and spec.kind is KpiKind.DURATION:
        return f"p50 {format_duration(row['p50'])}, p90 {format_duration(row['p90'])}"
    if spec is not None and spec.kind is KpiKind.PROPORTION and spec.scale == 1.0:
        ci = ""
        if row["ci_low"] is not None and row["ci_high"] is not None:
            ci = f" [{row['ci_low'] * 100:.1f}-{row['ci_high'] * 100:.1f}]"
        return f"{format_percent(value)}{ci}"
    if spec is not None and spec.kind is KpiKind.SCORE and row["p_value"] is not None:
        return f"{value:.4g} (p={row['p_value']:.2g})"
    return f"{value:.4g}"


def _count(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


@kpi_app.command("show")
def show_command(
    kpi: Annotated[
        str | None, typer.Option("--kpi", help="KPI name, e.g. alert_ppv (see DESIGN §5).")
    ] = None,
    site: Annotated[str | None, typer.Option("--site", help="Site id; '*' = all sites.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Algorithm name or finding code.")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Algorithm version; default '*' (all versions together); 'any': every row.",
        ),
    ] = None,
    window: Annotated[str | None, typer.Option("--window", help="1h, 1d, 7d or 30d.")] = None,
    final: Annotated[
        bool,
        typer.Option(
            "--final/--all",
            help="Final value per window (kpi_final) or every emitted value (kpi_values).",
        ),
    ] = True,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    output: Annotated[str, typer.Option("--format", "-f", help="table | csv | json.")] = "table",
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
) -> None:
    """KPI values, most recent windows first."""
    if output not in {"table", "csv", "json"}:
        _err.print(f"[red]error:[/] --format must be table, csv or json, not {output!r}")
        raise typer.Exit(2)
    if kpi is not None and kpi not in KPI_BY_NAME:
        _err.print(f"[red]error:[/] unknown KPI {kpi!r}; known: {', '.join(sorted(KPI_BY_NAME))}")
        raise typer.Exit(2)
    if window is not None and window not in WINDOW_SPEC_BY_NAME:
        _err.print(f"[red]error:[/] --window must be one of {', '.join(WINDOW_SPEC_BY_NAME)}")
        raise typer.Exit(2)
    sql, params = kpi_query(
        kpi=kpi, site=site, model=model, version=version, window=window, final=final, limit=limit
    )
    with open_backend(chdb, database, create=False) as backend:
        columns, rows = backend.execute(sql, params)
    docs = [dict(zip(columns, row, strict=True)) for row in rows]
    if output == "json":
        sys.stdout.write(json.dumps(docs, ensure_ascii=False, indent=2) + "\n")
        return
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        return
    table = Table(
        title=f"{'final' if final else 'all emitted'} KPI values",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    # The version column only when asked for: by default every row is version '*'.
    names = ["kpi", "size", "site", "model", *(["version"] if version else []), "window (UTC)"]
    for name in names:
        table.add_column(name, no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("num / den", justify="right", no_wrap=True)
    table.add_column("rev", justify="right", no_wrap=True)
    if not final:
        table.add_column("final")
    for d in docs:
        cells = [d["kpi"], d["window_size"], d["site_id"], d["algorithm_name"]]
        if version:
            cells.append(d["algorithm_version"])
        cells += [
            _window(d),
            _value(d),
            f"{_count(d['numerator'])} / {_count(d['denominator'])}".strip(" /"),
            str(d["revision"]),
        ]
        if not final:
            cells.append("yes" if d["final"] else "current")
        table.add_row(*cells)
    Console().print(table)
    _err.print(f"{len(docs)} row(s)")
