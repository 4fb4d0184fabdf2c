"""Options and helpers shared by the ``imgov`` commands: the audit database, the broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from schemas.errors import ImgovError
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import ChdbBackend, ClickHouseBackend, QueryBackend

__all__ = ["BootstrapOption", "ChdbOption", "DatabaseOption", "open_backend"]

ChdbOption = Annotated[
    Path | None,
    typer.Option(
        "--chdb",
        help="Use this chDB data directory instead of the ClickHouse server.",
        show_default=False,
        file_okay=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        help="Database [default: $IMGOV_CLICKHOUSE_DATABASE or imgov]", show_default=False
    ),
]

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        help=(
            "host:port of the broker [default: $IMGOV_KAFKA_BOOTSTRAP or 127.0.0.1:19092];"
            " TLS and SASL come from IMGOV_KAFKA_* (environment and files) only"
        ),
        show_default=False,
    ),
]

_err = Console(stderr=True)


@contextmanager
def open_backend(
    chdb: Path | None, database: str | None, *, create: bool
) -> Iterator[QueryBackend]:
    """Opens the audit database for one command; closes it when the command ends.

    An error opening or using it is printed and ends the command with exit code 1.
    """
    try:
        settings = ClickHouseSettings()
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        _err.print(f"[red]error:[/] invalid ClickHouse settings: {problems}")
        raise typer.Exit(1) from exc
    database = database or settings.database
    try:
        backend: QueryBackend = (
            ChdbBackend(chdb, database)
            if chdb is not None
            else ClickHouseBackend.connect(settings, database=database, create_database=create)
        )
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        yield backend
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        backend.close()
