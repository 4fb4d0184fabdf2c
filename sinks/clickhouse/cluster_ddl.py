"""The replicated layout: every audit table on every replica of a cluster (DESIGN §9).

``imgov db migrate --cluster NAME`` applies the same migration files as the single-node
layout, rewritten statement by statement (:func:`replicated_statement`):

* ``ENGINE = XMergeTree[(args)]`` becomes ``ReplicatedXMergeTree('/clickhouse/tables/
  {shard}/<db>/<table>', '{replica}'[, args])``: the replicated form of the same engine,
  same columns, ``PARTITION BY`` and ``ORDER BY``, so ReplacingMergeTree's deduplication
  and ``FINAL`` / ``argMax`` reads mean what they mean on one server (each replica holds
  every row);
* every ``CREATE`` / ``ALTER`` / ``DROP`` gets ``ON CLUSTER NAME`` and a database-qualified
  name, so one statement reaches every replica (ClickHouse's distributed DDL queue in
  ZooKeeper) and a replica that was down runs it when it comes back;
* a view's ``FROM`` / ``JOIN`` sources are qualified with the database: the replicas run
  ``ON CLUSTER`` DDL in a session whose current database is ``default``, and 18.16 would
  otherwise bind the view to ``default.<table>``;
* the ``schema_migrations`` bookkeeping table is replicated too (:func:`bootstrap_sql`),
  so ``imgov db status`` on either replica shows the same.

The ``{shard}`` and ``{replica}`` macros come from each server's config
(infra/clickhouse/cluster.xml). The rewrite needs a server with ZooKeeper (18.16 or a
current one); chDB and the single-node layout keep the files as they are.

Migrations are idempotent as in the single-node layout; a migration's checksum covers
the file's checksum and the rewritten text, so a database migrated in one layout refuses
the other (``MigrationChecksumError``) instead of mixing them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from schemas.errors import ImgovError
from sinks.clickhouse.migrate import (
    BOOTSTRAP_SQL,
    MIGRATIONS_TABLE,
    Migration,
    load_migrations,
    migrate,
)
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import ClickHouseBackend, QueryBackend, QueryError

__all__ = [
    "ClusterDDLError",
    "ShardHost",
    "bootstrap_sql",
    "cluster_shards",
    "migrate_replicated",
    "replicated_migrations",
    "replicated_statement",
    "zookeeper_path",
]


class ClusterDDLError(ImgovError):
    """A statement cannot be rewritten for the replicated layout, or the cluster is unknown."""


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

_CREATE_TABLE = re.compile(
    rf"^CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})\b(.*)$", re.IGNORECASE | re.DOTALL
)
_CREATE_VIEW = re.compile(
    rf"^CREATE\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})\s+AS\b(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_NAME})\s*$", re.IGNORECASE)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+({_NAME})\b(.*)$", re.IGNORECASE | re.DOTALL)

# The engine clause of a MergeTree-family table: its name and its (simple) arguments.
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w*MergeTree)\b(?:\s*\(([^()]*)\))?", re.IGNORECASE)

# A table read by a view: FROM or JOIN, then a bare name (not a subquery, not db.name).
_SOURCE = re.compile(rf"\b(FROM|JOIN)(\s+)({_NAME})\b(?!\s*\.)", re.IGNORECASE)


def zookeeper_path(database: str, table: str) -> str:
    """Returns the ZooKeeper path of a replicated table (``{shard}`` expanded by the server)."""
    return f"/clickhouse/tables/{{shard}}/{database}/{table}"


def replicated_statement(
    statement: str, *, cluster: str, database: str, sources: Iterable[str] = ()
) -> str:
    """Returns one migration statement rewritten for the replicated layout.

    Args:
        statement: one statement (as :func:`~sinks.clickhouse.migrate.split_statements`
            gives): ``CREATE TABLE``, ``CREATE VIEW``, ``ALTER TABLE`` or ``DROP TABLE``.
        cluster: the ``remote_servers`` cluster whose replicas get the statement.
        database: the database holding the layout on every replica.
        sources: the table and view names a view may read; only these are qualified.

    Raises:
        ClusterDDLError: a statement of another kind, or a table whose engine has no
            replicated form; deciding how it replicates is a design step, not a default.
    """
    _check_identifier(cluster, "cluster")
    _check_identifier(database, "database")
    on = f"ON CLUSTER {cluster}"
    if match := _CREATE_TABLE.match(statement):
        table, rest = match.groups()
        engine = _ENGINE.search(rest)
        if engine is None:
            raise ClusterDDLError(f"table {table}: no MergeTree-family engine to replicate")
        name, args = engine.groups()
        if name.lower().startswith("replicated"):
            replicated = engine.group(0)
        else:
            params = [f"'{zookeeper_path(database, table)}'", "'{replica}'"]
            if args is not None and args.strip():
                params.append(args.strip())
            replicated = f"ENGINE = Replicated{name}({', '.join(params)})"
        rest = rest[: engine.start()] + replicated + rest[engine.end() :]
        return f"CREATE TABLE IF NOT EXISTS {database}.{table} {on}{rest}"
    if match := _CREATE_VIEW.match(statement):
        view, select = match.groups()
        known = frozenset(sources)

        def qualify(source: re.Match[str]) -> str:
            keyword, space, name = source.groups()
            if name in known:
                return f"{keyword}{space}{database}.{name}"
            return source.group(0)

        return f"CREATE VIEW IF NOT EXISTS {database}.{view} {on} AS{_SOURCE.sub(qualify, select)}"
    if match := _DROP_TABLE.match(statement):
        (name,) = match.groups()
        return f"DROP TABLE IF EXISTS {database}.{name} {on}"
    if match := _ALTER_TABLE.match(statement):
        table, change = match.groups()
        return f"ALTER TABLE {database}.{table} {on}{change}"
    raise ClusterDDLError(f"cannot replicate: {statement[:80]}")


def bootstrap_sql(cluster: str, database: str) -> str:
    """Returns the replicated form of the ``schema_migrations`` table's DDL."""
    return replicated_statement(BOOTSTRAP_SQL.strip(), cluster=cluster, database=database)


def _created_names(migrations: Sequence[Migration]) -> set[str]:
    names = {MIGRATIONS_TABLE}
    for migration in migrations:
        for statement in migration.statements:
            match = _CREATE_TABLE.match(statement) or _CREATE_VIEW.match(statement)
            if match is not None:
                names.add(match.group(1))
    return names


def replicated_migrations(
    cluster: str, database: str, migrations: Sequence[Migration] | None = None
) -> tuple[Migration, ...]:
    """Returns the migrations rewritten for the replicated layout, for :func:`migrate`.

    Each keeps its version and name; its SQL is the rewritten text and its checksum
    covers the file's checksum and that text (as in :mod:`sinks.clickhouse.sharded`).

    Raises:
        ClusterDDLError: as :func:`replicated_statement`.
    """
    source = list(load_migrations() if migrations is None else migrations)
    names = _created_names(source)
    return tuple(
        migration.rewritten(
            [
                replicated_statement(s, cluster=cluster, database=database, sources=names)
                for s in migration.statements
            ]
        )
        for migration in source
    )


@dataclass(frozen=True, slots=True)
class ShardHost:
    """One host of a cluster, as ``system.clusters`` lists it."""

    shard: int
    host: str
    port: int


def cluster_shards(backend: QueryBackend, cluster: str) -> list[ShardHost]:
    """Returns every host of ``cluster`` (all replicas of all shards), by shard, as the
    server lists them: the replicated layout checks the cluster exists, the sharded one
    (:mod:`sinks.clickhouse.sharded`) migrates and prunes each host.

    Raises:
        ClusterDDLError: the server has no such cluster.
        QueryError: the server could not be asked.
    """
    _, rows = backend.execute(
        "SELECT shard_num, host_address, port FROM system.clusters "
        "WHERE cluster = %(cluster)s ORDER BY shard_num, replica_num",
        {"cluster": cluster},
    )
    if not rows:
        raise ClusterDDLError(
            f"the server knows no cluster {cluster!r} (its <remote_servers>); "
            "is it a node of the cluster (make cluster-up)?"
        )
    return [ShardHost(int(shard), str(host), int(port)) for shard, host, port in rows]


def migrate_replicated(
    settings: ClickHouseSettings,
    cluster: str,
    *,
    database: str | None = None,
    on_applied: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Creates or upgrades the replicated layout on every replica of ``cluster``.

    Connects to the server of ``settings`` (or an ``alt_hosts`` replica), creates the
    database ``ON CLUSTER`` and applies the rewritten migrations there; the distributed
    DDL queue carries every statement to the other replicas, and the server waits for
    them (``distributed_ddl_task_timeout``), so on return every replica has the schema.
    Safe to run again.

    Returns:
        The migrations applied by this call, in order.

    Raises:
        ClusterDDLError: unknown cluster, or a migration that cannot be replicated.
        MigrationChecksumError: the database holds another layout or an edited migration.
        QueryError: a statement failed (e.g. a replica did not answer in time).
    """
    database = database or settings.database
    _check_identifier(database, "database")
    migrations = replicated_migrations(cluster, database)
    entry = ClickHouseBackend.connect(settings, database="system")
    try:
        cluster_shards(entry, cluster)
        entry.execute(f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}")
    finally:
        entry.close()
    backend = ClickHouseBackend.connect(settings, database=database)
    try:
        return migrate(
            backend,
            migrations,
            on_applied=on_applied,
            bootstrap=bootstrap_sql(cluster, database),
        )
    except QueryError as exc:
        raise type(exc)(f"cluster {cluster}: {exc}", exc.code) from exc
    finally:
        backend.close()


def _check_identifier(name: str, what: str) -> None:
    if not re.fullmatch(_NAME, name):
        raise ClusterDDLError(f"not a plain {what} name: {name!r}")
