"""``imgov db ...`` and ``imgov query``: the audit database from the command line.

Both work on the ClickHouse server named by ``IMGOV_CLICKHOUSE_*`` (default
127.0.0.1:19000, user ``imgov``, database ``imgov``) or, with ``--chdb PATH``, on an
embedded chDB data directory (e.g. the one ``imgov replay`` or the demo wrote).

``imgov db migrate`` runs as the configured user: on the 18.16 server the writer
``imgov`` may create databases and tables (users.xml); the read-only ``compliance``
user may not. On a modern server the writer role of infra/clickhouse/grants.sql has
the same rights.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import ImgovError
from sinks.clickhouse.cluster_ddl import migrate_replicated, replicated_migrations
from sinks.clickhouse.migrate import (
    Migration,
    applied_migrations,
    drop_partitions_before,
    load_migrations,
    migrate,
)
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.sharded import (
    ShardHost,
    drop_partitions_before_sharded,
    migrate_sharded,
    sharded_cluster,
    sharded_migrations,
)
from sinks.query import BackendUnavailableError, QueryBackend
from streams.cli.options import ChdbOption, DatabaseOption, open_backend

__all__ = ["db_app", "query_command"]

db_app = typer.Typer(
    help="The ClickHouse audit database: schema migrations and retention.",
    no_args_is_help=True,
)

_err = Console(stderr=True)


def _target(chdb: Path | None, backend: QueryBackend) -> str:
    if chdb is not None:
        return f"chDB {chdb} database {backend.database}"
    settings = ClickHouseSettings()
    return f"ClickHouse {settings.host}:{settings.port} database {backend.database}"


ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help=(
            "Replicated layout on this remote_servers cluster: Replicated*MergeTree tables "
            "and views created ON CLUSTER [default: $IMGOV_CLICKHOUSE_CLUSTER; unset = one server]."
        ),
        show_default=False,
    ),
]


ShardedOption = Annotated[
    bool,
    typer.Option(
        "--sharded",
        help=(
            "With --cluster: the sharded layout instead (a local table per shard and a "
            "Distributed table under each name, sinks/clickhouse/sharded.py)."
        ),
    ),
]


@db_app.command("migrate")
def migrate_command(
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
    cluster: ClusterOption = None,
    sharded: ShardedOption = False,
) -> None:
    """Create or upgrade the audit tables and views (safe to run again)."""
    console = Console()

    def report(migration: Migration) -> None:
        console.print(f"applied {migration.version:04d}_{migration.name}")

    total = len(load_migrations())
    if chdb is None:
        settings = ClickHouseSettings()
        cluster = cluster or settings.cluster
    elif cluster is not None:
        _err.print("[red]error:[/] --cluster needs a ClickHouse server, not --chdb")
        raise typer.Exit(2)
    if sharded and cluster is None:
        _err.print("[red]error:[/] --sharded needs --cluster NAME (a ClickHouse cluster)")
        raise typer.Exit(2)
    if sharded and cluster is not None:
        target = database or settings.database

        def report_host(host: ShardHost, migration: Migration) -> None:
            where = f"shard {host.shard} {host.host}:{host.port}"
            console.print(f"applied {migration.version:04d}_{migration.name} on {where}")

        try:
            applied = migrate_sharded(settings, cluster, database=target, on_applied=report_host)
        except ImgovError as exc:
            _err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        where = f"sharded layout on {cluster} ({len(applied)} hosts) database {target}"
        done = max(applied.values(), key=len, default=[])
    elif cluster is not None:
        target = database or settings.database
        where = f"cluster {cluster} via {settings.host}:{settings.port} database {target}"
        try:
            done = migrate_replicated(settings, cluster, database=target, on_applied=report)
        except ImgovError as exc:
            _err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    else:
        with open_backend(chdb, database, create=True) as backend:
            where = _target(chdb, backend)
            done = migrate(backend, on_applied=report)
    if done:
        console.print(f"[green]{where}: {len(done)} migration(s) applied, {total} in all[/]")
    else:
        console.print(f"{where}: up to date ({total} migrations)")


@db_app.command("status")
def status_command(
    chdb: ChdbOption = None, database: DatabaseOption = None, cluster: ClusterOption = None
) -> None:
    """List the migrations, whether each is applied, and in which layout.

    A layout's migrations carry their own checksums (the replicated and sharded layouts
    rewrite the files), so the layout is the one whose checksums the database recorded:
    the single-node one, or, with a cluster (--cluster or $IMGOV_CLICKHOUSE_CLUSTER), its
    replicated or sharded form.
    """
    if chdb is None:
        cluster = cluster or ClickHouseSettings().cluster
    with open_backend(chdb, database, create=False) as backend:
        try:
            applied = applied_migrations(backend)
        except BackendUnavailableError:
            raise  # a server that cannot be reached is an error, not "nothing applied"
        except ImgovError:
            applied = {}  # no migrations table yet
        layouts: dict[str, tuple[Migration, ...]] = {"single node": load_migrations()}
        if chdb is None and cluster is not None:
            layouts[f"replicated on {cluster}"] = replicated_migrations(cluster, backend.database)
            layouts[f"sharded on {cluster}"] = sharded_migrations(cluster, backend.database)
        layout = max(
            layouts,
            key=lambda name: sum(applied.get(m.version) == m.checksum for m in layouts[name]),
        )
        table = Table(title=_target(chdb, backend))
        table.add_column("version", justify="right")
        table.add_column("name")
        table.add_column("status")
        for migration in layouts[layout]:
            checksum = applied.get(migration.version)
            if checksum is None:
                state = "[yellow]pending[/]"
            elif checksum == migration.checksum:
                state = "[green]applied[/]"
            else:
                state = "[red]changed since applied[/]"
            table.add_row(f"{migration.version:04d}", migration.name, state)
        console = Console()
        console.print(table)
        console.print(f"layout: {layout}")


@db_app.command("drop-before")
def drop_before_command(
    month: Annotated[int, typer.Argument(help="YYYYMM: drop every monthly partition before it.")],
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Retention: drop the audit data of every month before MONTH.

    ClickHouse has no TTL here. Lineage revisions are partitioned by update time: keep the
    lineage retention plus a month beyond what `imgov audit verify` must check.

    The layout is recognised on the server: single node and replicated, the server's own
    tables (a replicated DROP PARTITION reaches the other replicas by replication); sharded
    (Distributed tables), the `_local` tables on every host of the cluster, each reached alone.
    """
    console = Console()
    with open_backend(chdb, database, create=False) as backend:
        cluster = None if chdb is not None else sharded_cluster(backend)
        if cluster is None:
            target = _target(chdb, backend)
        else:
            target = f"the sharded layout on {cluster} (every host) database {backend.database}"
        if not yes:
            typer.confirm(f"Drop all audit partitions before {month} in {target}?", abort=True)
        if cluster is None:
            dropped = drop_partitions_before(backend, month)
            for table, partition in dropped:
                console.print(f"dropped {table} partition {partition}")
            console.print(f"{len(dropped)} partition(s) dropped")
            return

        def report(host: ShardHost, table: str, partition: str) -> None:
            where = f"shard {host.shard} {host.host}:{host.port}"
            console.print(f"dropped {table} partition {partition} on {where}")

        per_host = drop_partitions_before_sharded(
            ClickHouseSettings(), cluster, month, database=backend.database, on_dropped=report
        )
        for host, done in per_host.items():
            where = f"shard {host.shard} {host.host}:{host.port}"
            console.print(f"{where}: {len(done)} partition(s) dropped")
        total = sum(len(done) for done in per_host.values())
        console.print(f"{total} partition(s) dropped on {len(per_host)} host(s) of {cluster}")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return _cell(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def query_command(
    sql: Annotated[
        str, typer.Argument(help='One SQL statement, e.g. "SELECT * FROM model_scorecard".')
    ],
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
    output: Annotated[
        str,
        typer.Option("--format", "-f", help="table | csv | json (a JSON array of objects)."),
    ] = "table",
) -> None:
    """Run SQL on the audit database and print the result."""
    if output not in {"table", "csv", "json"}:
        _err.print(f"[red]error:[/] --format must be table, csv or json, not {output!r}")
        raise typer.Exit(2)
    with open_backend(chdb, database, create=False) as backend:
        columns, rows = backend.execute(sql)
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) if v is not None else "" for v in row] for row in rows)
    elif output == "json":
        docs = [dict(zip(columns, (_jsonable(v) for v in row), strict=True)) for row in rows]
        sys.stdout.write(json.dumps(docs, ensure_ascii=False, default=str, indent=2) + "\n")
    else:
        table = Table(show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        Console().print(table)
        _err.print(f"{len(rows)} row(s)")
