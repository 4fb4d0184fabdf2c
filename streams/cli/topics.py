"""``imgov topics ...``: create the pipeline's topics from infra/kafka/topics.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.options import BootstrapOption
from streams.runtime.settings import KafkaConfigError, load_kafka_settings
from streams.runtime.topic_admin import (
    CreationStatus,
    TopicAdminError,
    TopicCreation,
    TopicsError,
    create_topics,
    load_topics,
)

__all__ = ["topics_app"]

topics_app = typer.Typer(
    help="Kafka topics of the pipeline (defined in infra/kafka/topics.toml).",
    no_args_is_help=True,
)

_STATUS_STYLE = {
    CreationStatus.CREATED: "green",
    CreationStatus.EXISTS: "cyan",
    CreationStatus.FAILED: "red",
}


def _results_table(results: tuple[TopicCreation, ...] | list[TopicCreation]) -> Table:
    table = Table(title="Kafka topics")
    table.add_column("topic")
    table.add_column("status")
    table.add_column("partitions", justify="right")
    table.add_column("note")
    for r in results:
        found = r.existing_partitions
        partitions = str(r.partitions) if found is None else str(found)
        note = r.message
        if r.partitions_differ:
            note = f"file says {r.partitions} partitions; the topic is left as it is"
        style = "yellow" if r.partitions_differ else _STATUS_STYLE[r.status]
        table.add_row(r.name, f"[{style}]{r.status}[/]", partitions, note)
    return table


@topics_app.command("create")
def create(
    bootstrap: BootstrapOption = None,
    file: Annotated[
        Path | None,
        typer.Option(
            help="Topic definitions [default: infra/kafka/topics.toml]",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Replication factor of every topic (a cluster: 3), over the settings'"
            " and the file's.",
            show_default=False,
        ),
    ] = None,
    min_insync_replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="min.insync.replicas of every topic (a cluster: 2), over the settings'"
            " and the file's.",
            show_default=False,
        ),
    ] = None,
    timeout_ms: Annotated[
        int,
        typer.Option(
            min=1000, help="Broker-side creation timeout and the wait for leaders, in ms."
        ),
    ] = 30_000,
) -> None:
    """Create the topics that do not exist yet (safe to run again).

    The replication factor and ``min.insync.replicas`` come from the settings
    (IMGOV_KAFKA_REPLICATION_FACTOR, IMGOV_KAFKA_MIN_INSYNC_REPLICAS) when set, else from
    the file (single broker). Existing topics are left as they are.

    Exits with 0 when done, 1 when the file is invalid or the broker refused a topic, and 2
    when an existing topic has a different partition count from the file's.
    """
    console = Console()
    try:
        kafka = load_kafka_settings(
            bootstrap=bootstrap,
            replication_factor=replication_factor,
            min_insync_replicas=min_insync_replicas,
        )
    except KafkaConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    address = kafka.bootstrap
    try:
        specs = load_topics(file)
        results = create_topics(
            address,
            specs,
            replication_factor=kafka.replication_factor,
            min_insync_replicas=kafka.min_insync_replicas,
            timeout_ms=timeout_ms,
            security=kafka.security(),
        )
    except TopicAdminError as exc:
        if exc.results:
            console.print(_results_table(exc.results))
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except TopicsError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc

    console.print(_results_table(results))
    created = sum(r.status is CreationStatus.CREATED for r in results)
    console.print(f"{created} created, {len(results) - created} already there, on {address}")
    if any(r.partitions_differ for r in results):
        console.print("[yellow]warning:[/] some existing topics differ from the file")
        raise typer.Exit(2)
