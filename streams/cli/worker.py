"""``imgov worker``: run the live pipeline (Kafka -> Faust agents -> Kafka + ClickHouse)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from schemas.errors import ImgovError

__all__ = ["worker_command"]


def worker_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML settings file ([worker] table plus the governance settings); "
            "IMGOV_* environment variables are read first.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the public demo pseudonymisation key.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the settings, print them and exit.")
    ] = False,
) -> None:
    """Run a worker of the live pipeline until SIGINT/SIGTERM.

    Settings: IMGOV_WORKER_* (app id, topic namespace, state directory, batch size,
    idle close, web server), IMGOV_KAFKA_* (bootstrap, TLS, SASL), IMGOV_CLICKHOUSE_*, and the
    governance settings (IMGOV_PSEUDONYM_KEY...). Start more workers with the same
    IMGOV_WORKER_APP_ID (and their own IMGOV_WORKER_DATADIR) to scale out.
    """
    from streams.runtime.worker import plan_worker, run_worker

    try:
        plan = plan_worker(config, demo=demo)
    except ImgovError as exc:
        typer.echo(f"imgov worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    if check:
        shown = plan.worker.model_dump(mode="json")
        # What the settings resolve to: the consumer group and static membership id.
        shown["group_id"] = plan.worker.group_id
        shown["group_instance_id"] = plan.worker.group_instance_id
        typer.echo(json.dumps(shown, indent=2))
        return
    try:
        run_worker(plan)
    except ImgovError as exc:
        typer.echo(f"imgov worker: {exc}", err=True)
        raise typer.Exit(1) from exc
