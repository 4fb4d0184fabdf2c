"""The ``imgov`` command line."""

from __future__ import annotations

import typer

from streams import __version__
from streams.cli.alerts import alerts_command
from streams.cli.audit import audit_app
from streams.cli.db import db_app, query_command
from streams.cli.demo import demo_command
from streams.cli.gateway import gateway_command
from streams.cli.kpi import kpi_app
from streams.cli.policy import policy_app
from streams.cli.replay import replay_command
from streams.cli.schemas import schemas_app
from streams.cli.simulate import simulate
from streams.cli.status import status_command
from streams.cli.subscribe import subscribe_command
from streams.cli.topics import topics_app
from streams.cli.worker import worker_command
from streams.governance import tune_garbage_collector

app = typer.Typer(
    name="imgov",
    help="Governance pipeline for AI in medical imaging: lineage, KPIs, breaches, audit.",
    no_args_is_help=True,
    add_completion=False,
    # Every help text below is read as Markdown, so the paragraphs of a docstring are
    # reflowed to the terminal's width. In typer's default "rich" mode each line break of
    # a docstring stays in the output, cutting sentences wherever the source wrapped.
    # The root's mode applies to every command and group mounted under it.
    rich_markup_mode="markdown",
)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.command("simulate")(simulate)
app.add_typer(db_app, name="db")
app.command("query")(query_command)
app.command("worker")(worker_command)
app.command("replay")(replay_command)
app.command("demo")(demo_command)
app.add_typer(audit_app, name="audit")
app.add_typer(kpi_app, name="kpi")
app.add_typer(policy_app, name="policy")
app.command("subscribe")(subscribe_command)
app.command("gateway")(gateway_command)
app.command("alerts")(alerts_command)
app.command("status")(status_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"imgov {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Governance pipeline for AI in medical imaging."""
    tune_garbage_collector()
