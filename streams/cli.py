"""The ``imgov`` command line."""

from __future__ import annotations

import typer

from streams import __version__

app = typer.Typer(
    name="imgov",
    help="Governance pipeline for AI in medical imaging: lineage, KPIs, breaches, audit.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"imgov {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Governance pipeline for AI in medical imaging."""
