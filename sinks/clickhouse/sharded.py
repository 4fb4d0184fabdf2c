"""The sharded layout: the audit tables spread over the shards of a cluster (DESIGN §9).

``imgov db migrate --cluster NAME --sharded`` applies the same migration files as the
single-node layout, rewritten statement by statement (:func:`sharded_statements`):

* every table ``t`` becomes ``t_local`` on each shard (same columns, engine, ordering
  key), plus ``t`` itself as ``Distributed(NAME, db, t_local, <sharding key>)`` with the
  same columns (a MATERIALIZED one as ALIAS: 18.16's Distributed table would forward it,
  and the shard refuses to be sent a MATERIALIZED column);
* a view that combines only rows of one sharding key (``lineage_latest``, ``kpi_final``,
  ``breaches_open``) becomes ``v_local`` on each shard, over the ``_local`` tables, plus
  ``v`` as a ``Distributed`` table over ``v_local``: each shard computes its keys and the
  Distributed table concatenates them;
* a view that aggregates across keys (``model_scorecard``) stays as written, over the
  Distributed tables and views, so ClickHouse merges the shards' partial aggregates.

Every statement runs on every host of the cluster (each can serve reads and writes),
directly, not ``ON CLUSTER``: the layout needs no ZooKeeper. Each host records what it
applied in its own ``schema_migrations``. The local tables are the plain engines: with
one replica per shard (the cluster ``imgov_sharded``), a Replicated engine would put
ZooKeeper in every insert's path and copy nothing; a cluster with several replicas per
shard is refused. (Production would combine both: ``Replicated*`` local tables with
``{sharded_shard}`` in their ZooKeeper path, as :mod:`sinks.clickhouse.cluster_ddl`
writes them, under the same Distributed tables.)

So the writer, the compliance views and ``imgov audit verify`` keep using the original
names. What makes their results equal to a single node's is the one rule of this
module: **all versions of a row land on the same shard**. ReplacingMergeTree collapses
duplicates, and FINAL / argMax pick the latest version, only within one server; a
sharding key that is a function of a table's ordering key (its row identity) keeps
every version of a row together. Beyond that rule, the keys are chosen so that one
lineage key (site, study, algorithm, finding) has all its revisions, events, review
candidates and checkpoint heads on ONE shard (``cityHash64(site_id, study_uid)``):
``lineage_latest``'s "highest revision per key" and verify's hash chain then hold per
shard, and one study's audit trail is read from one server.

A query over a Distributed table whose ``IN`` subquery reads a Distributed table is
refused by default (``distributed_product_mode = 'deny'``): the shard-local views avoid
it, and ``latest_checkpoints`` (:mod:`sinks.clickhouse.checkpoints`) uses ``GLOBAL IN``.

Inserts into a Distributed table are asynchronous by default (queued on the receiving
server's disk, forwarded later): the writer's flush would return before the rows are on
their shard. :class:`~sinks.query.ClickHouseBackend` therefore inserts with
``insert_distributed_sync = 1`` (ClickHouse 18.16 has it), which makes the insert return
only once every shard has written its part, so flush-then-commit holds.

Retention (``imgov db drop-before``): the parts are in the ``t_local`` tables, a
Distributed table has none, so :func:`drop_partitions_before_sharded` drops the months of
every ``t_local`` on every host of the cluster, each host reached alone; the command
recognises the layout by the Distributed engine of its tables (:func:`sharded_cluster`).
An ad-hoc query with a plain ``IN`` over a Distributed table gets the 'deny' error above
and must say ``GLOBAL IN``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from sinks.clickhouse.cluster_ddl import ClusterDDLError, ShardHost, cluster_shards
from sinks.clickhouse.migrate import (
    PARTITIONED_TABLES,
    Migration,
    drop_partitions_before,
    load_migrations,
    migrate,
)
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import ClickHouseBackend, QueryBackend, QueryError

__all__ = [
    "CROSS_SHARD_VIEWS",
    "LOCAL_SUFFIX",
    "SHARDING_KEYS",
    "SHARD_LOCAL_VIEWS",
    "ShardHost",
    "ShardingError",
    "cluster_shards",
    "distributed_cluster",
    "drop_partitions_before_sharded",
    "key_columns",
    "migrate_sharded",
    "sharded_cluster",
    "sharded_migrations",
    "sharded_statements",
]

LOCAL_SUFFIX = "_local"
"""Name of the per-shard table or view behind a Distributed one: ``lineage_history_local``."""

_LINEAGE_KEY_HASH = "cityHash64(site_id, study_uid)"

SHARDING_KEYS: Mapping[str, str] = {
    # One study's whole audit trail on one shard: its events, every revision of every
    # lineage key (site, study, algorithm, finding) of it, its review candidates and its
    # checkpoint heads. Site and study, not the full lineage key, so that `imgov audit
    # study` and the event log of a study read one shard; a study has a handful of
    # keys, far too few to unbalance the shards.
    "event_log": _LINEAGE_KEY_HASH,
    "lineage_history": _LINEAGE_KEY_HASH,
    "review_candidates": _LINEAGE_KEY_HASH,
    "audit_checkpoint_heads": _LINEAGE_KEY_HASH,
    # A KPI window's identity (the whole ordering key): its current, final and revised
    # emissions replace each other on one shard, and `kpi_final`'s argMax per window is
    # computed there. Not the site alone: site '*' (all sites) carries as many rows as
    # every site together and would load one shard.
    "kpi_values": (
        "cityHash64(kpi, window_size, site_id, algorithm_name, algorithm_version, "
        "finding_code, window_start_ms)"
    ),
    # The breach, not (breach, state): `breaches_open` hides an OPEN row when the same
    # breach has a RESOLVED row, which it can only see on the same shard.
    "kpi_breaches": "cityHash64(breach_id)",
    # The dead letter's identity (the whole ordering key): a redelivered letter collapses.
    "rejected_events": (
        "cityHash64(source_topic, source_partition, source_offset, reason, value_sha256)"
    ),
    # An input partition's checkpoints together (a retried checkpoint collapses; its
    # greatest sequence is on one shard). A few rows per partition and hour: balance is
    # irrelevant.
    "audit_checkpoints": "cityHash64(input_partition)",
}
"""The sharding key of every table, an expression of columns of its ordering key."""

SHARD_LOCAL_VIEWS: Mapping[str, tuple[str, ...]] = {
    "lineage_latest": ("site_id", "study_uid", "algorithm_name", "finding_code"),
    "kpi_final": (
        "kpi",
        "window_size",
        "site_id",
        "algorithm_name",
        "algorithm_version",
        "finding_code",
        "window_start_ms",
    ),
    "breaches_open": ("breach_id",),
}
"""Views computed per shard, with the columns that identify the rows each output row
is computed from (its GROUP BY or IN key). Every table such a view reads must be
sharded by columns among these, so the rows a view row combines are on one shard."""

CROSS_SHARD_VIEWS = frozenset({"model_scorecard"})
"""Views that aggregate across sharding keys: kept as written, over Distributed tables."""


class ShardingError(ClusterDDLError):
    """A migration cannot be laid out over shards, or the cluster is not usable."""


_CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)(\s.*)$", re.S | re.I)
_CREATE_VIEW = re.compile(r"^CREATE\s+VIEW\s+IF\s+NOT\s+EXISTS\s+(\w+)\s+AS\s+(.*)$", re.S | re.I)
_DROP_TABLE = re.compile(r"^DROP\s+TABLE\s+IF\s+EXISTS\s+(\w+)\s*$", re.I)
_ALTER_TABLE = re.compile(r"^ALTER\s+TABLE\s+(\w+)(\s+ADD\s+COLUMN\s.*)$", re.S | re.I)
_MATERIALIZED = re.compile(r"\bMATERIALIZED\b", re.I)
_SOURCE = re.compile(r"\b(FROM|JOIN)(\s+)(\w+)\b", re.I)
_IDENTIFIER = re.compile(r"\b[a-z_][a-z0-9_]*\b")
_FUNCTIONS = frozenset({"cityhash64"})


def key_columns(expression: str) -> frozenset[str]:
    """Returns the column names a sharding key expression reads (functions excluded)."""
    return frozenset(
        name for name in _IDENTIFIER.findall(expression) if name.lower() not in _FUNCTIONS
    )


def sharded_statements(statement: str, *, cluster: str, database: str) -> list[str]:
    """Returns the statements that apply one migration statement to the sharded layout.

    Args:
        statement: one statement of a migration file (as :func:`split_statements` gives).
        cluster: the ``remote_servers`` cluster the Distributed tables span.
        database: the database holding the layout on every shard.

    Raises:
        ShardingError: the statement creates a table without a sharding key, a view that
            is neither shard-local nor cross-shard, or is of a form this layout cannot
            rewrite; deciding how it shards is a design step, not a default.
    """
    _check_identifier(cluster, "cluster")
    _check_identifier(database, "database")
    if match := _CREATE_TABLE.match(statement):
        table, rest = match.groups()
        key = SHARDING_KEYS.get(table)
        if key is None:
            raise ShardingError(
                f"table {table} has no sharding key: add one to "
                "sinks.clickhouse.sharded.SHARDING_KEYS (a function of its ORDER BY columns)"
            )
        local = table + LOCAL_SUFFIX
        args = f"{cluster}, {database}, {local}, {key}"
        return [
            f"CREATE TABLE IF NOT EXISTS {local}{rest}",
            f"CREATE TABLE IF NOT EXISTS {table}\n{_distributed_columns(rest)}\n"
            f"ENGINE = Distributed({args})",
        ]
    if match := _CREATE_VIEW.match(statement):
        view, select = match.groups()
        if view in CROSS_SHARD_VIEWS:
            return [statement]
        if view not in SHARD_LOCAL_VIEWS:
            raise ShardingError(
                f"view {view} is neither in SHARD_LOCAL_VIEWS nor in CROSS_SHARD_VIEWS of "
                "sinks.clickhouse.sharded: decide whether shards can compute it alone"
            )
        local = view + LOCAL_SUFFIX
        return [
            f"CREATE VIEW IF NOT EXISTS {local} AS {_local_sources(select, database)}",
            f"CREATE TABLE IF NOT EXISTS {view} AS {local}\n"
            f"ENGINE = Distributed({cluster}, {database}, {local})",
        ]
    if match := _DROP_TABLE.match(statement):
        (name,) = match.groups()
        if name in SHARDING_KEYS or name in SHARD_LOCAL_VIEWS:
            # The Distributed table first: it reads the local one.
            return [statement, f"DROP TABLE IF EXISTS {name}{LOCAL_SUFFIX}"]
        return [statement]
    if match := _ALTER_TABLE.match(statement):
        table, change = match.groups()
        if table not in SHARDING_KEYS:
            raise ShardingError(f"ALTER of {table}, which is not a sharded table")
        # The local table first: a Distributed table with a column its shards lack
        # would fail reads that name it.
        return [
            f"ALTER TABLE {table}{LOCAL_SUFFIX}{change}",
            f"ALTER TABLE {table}{_MATERIALIZED.sub('ALIAS', change)}",
        ]
    raise ShardingError(f"cannot lay out over shards: {statement[:80]}")


def sharded_migrations(
    cluster: str, database: str, migrations: Sequence[Migration] | None = None
) -> tuple[Migration, ...]:
    """Returns the migrations rewritten for the sharded layout, for :func:`migrate`.

    Each keeps its version and name; its SQL is the rewritten text and its checksum
    covers the file's checksum and that text, so a database migrated in one layout
    refuses the other (``MigrationChecksumError``) instead of mixing them, and a file
    edited after it was applied (even a comment) is refused as in the single-node layout.

    Raises:
        ShardingError: as :func:`sharded_statements`.
    """
    return tuple(
        migration.rewritten(
            [
                sql
                for statement in migration.statements
                for sql in sharded_statements(statement, cluster=cluster, database=database)
            ]
        )
        for migration in (load_migrations() if migrations is None else migrations)
    )


def migrate_sharded(
    settings: ClickHouseSettings,
    cluster: str,
    *,
    database: str | None = None,
    on_applied: Callable[[ShardHost, Migration], None] | None = None,
) -> dict[ShardHost, list[Migration]]:
    """Creates or upgrades the sharded layout on every host of ``cluster``.

    Asks the server of ``settings`` for the cluster's hosts, then migrates each one,
    connecting as the same user to that host alone (never to an ``alt_hosts`` server: a
    shard's schema must land on that shard); safe to run again (each host skips what it
    applied). ``on_applied`` is called after each migration recorded on a host.

    Returns:
        The migrations applied on each host by this call.

    Raises:
        ShardingError: unknown cluster, or a migration that cannot be sharded.
        MigrationChecksumError: a host holds another layout or an edited migration.
        QueryError: a host could not be reached or refused a statement.
    """
    database = database or settings.database
    migrations = sharded_migrations(cluster, database)
    hosts = _cluster_hosts(settings, cluster)
    shards = [host.shard for host in hosts]
    if len(set(shards)) != len(shards):
        # internal_replication: a Distributed table writes ONE replica of a shard and
        # leaves the rest to replication, which plain local tables do not have.
        raise ShardingError(
            f"cluster {cluster} has shards with several replicas: the sharded layout's "
            "local tables are not replicated, use a cluster of one replica per shard"
        )
    applied: dict[ShardHost, list[Migration]] = {}
    for host in hosts:
        backend = _connect_host(settings, host, cluster, database, create=True)
        try:
            report = None if on_applied is None else partial(on_applied, host)
            applied[host] = migrate(backend, migrations, on_applied=report)
        finally:
            backend.close()
    return applied


_DISTRIBUTED_CLUSTER = re.compile(r"^\s*Distributed\s*\(\s*['\"`]?(\w+)['\"`]?\s*,", re.I)


def distributed_cluster(engine_full: str) -> str | None:
    """Returns the cluster a ``system.tables.engine_full`` of a Distributed table names.

    ``Distributed(imgov_sharded, db, t_local, key)`` (18.16) or with quoted arguments
    (current servers) give ``imgov_sharded``; any other engine gives None.
    """
    match = _DISTRIBUTED_CLUSTER.match(engine_full)
    return None if match is None else match.group(1)


def sharded_cluster(backend: QueryBackend) -> str | None:
    """Returns the cluster of the sharded layout in ``backend``'s database, or None.

    The layout is recognised by its tables, not by flags: the partitioned audit tables
    are Distributed and each has its ``_local`` table beside it. Called by ``imgov db
    drop-before`` on the server it was pointed at (any host of the cluster).

    Raises:
        ShardingError: the Distributed tables name different clusters, or some audit
            tables are Distributed and others not (a half-made layout: migrate it first).
        QueryError: the server could not be asked.
    """
    names = [*PARTITIONED_TABLES, *(t + LOCAL_SUFFIX for t in PARTITIONED_TABLES)]
    _, rows = backend.execute(
        "SELECT name, engine_full FROM system.tables WHERE database = %(db)s AND name IN %(names)s",
        {"db": backend.database, "names": tuple(names)},
    )
    engines = {str(name): str(engine) for name, engine in rows}
    clusters = {table: distributed_cluster(engines.get(table, "")) for table in PARTITIONED_TABLES}
    named = {cluster for cluster in clusters.values() if cluster is not None}
    if not named:
        return None
    unsharded = [
        table
        for table, cluster in clusters.items()
        if cluster is None or table + LOCAL_SUFFIX not in engines
    ]
    if len(named) > 1 or unsharded:
        raise ShardingError(
            f"database {backend.database} is not one sharded layout (Distributed over "
            f"{', '.join(sorted(named))}; not sharded: {', '.join(unsharded) or 'none'}): "
            "run imgov db migrate --cluster NAME --sharded first"
        )
    return named.pop()


def drop_partitions_before_sharded(
    settings: ClickHouseSettings,
    cluster: str,
    before_yyyymm: int,
    *,
    database: str | None = None,
    on_dropped: Callable[[ShardHost, str, str], None] | None = None,
) -> dict[ShardHost, list[tuple[str, str]]]:
    """Retention on the sharded layout: drops the months before ``before_yyyymm`` of every
    ``t_local`` table on every host of ``cluster``.

    Each host is reached alone (as :func:`migrate_sharded` does): its parts are its own,
    and an ``alt_hosts`` server would drop another shard's months twice and this one's
    never. Safe to run again: a host whose months are gone drops nothing, so after a
    failure half-way, running the command again finishes the job. ``on_dropped(host,
    table, partition)`` is called for each partition dropped, once its host is done.

    Returns:
        ``(table, partition)`` dropped on each host, every host of the cluster a key.

    Raises:
        MigrationError: ``before_yyyymm`` is not a plausible YYYYMM (nothing dropped).
        ShardingError: unknown cluster.
        QueryError: a host could not be reached or refused a DROP PARTITION (the hosts
            before it have dropped their months).
    """
    database = database or settings.database
    local_tables = [table + LOCAL_SUFFIX for table in PARTITIONED_TABLES]
    dropped: dict[ShardHost, list[tuple[str, str]]] = {}
    for host in _cluster_hosts(settings, cluster):
        backend = _connect_host(settings, host, cluster, database, create=False)
        try:
            dropped[host] = drop_partitions_before(backend, before_yyyymm, local_tables)
        except QueryError as exc:
            raise QueryError(
                f"shard {host.shard} ({host.host}:{host.port}) of {cluster}: {exc}", exc.code
            ) from exc
        finally:
            backend.close()
        if on_dropped is not None:
            for table, partition in dropped[host]:
                on_dropped(host, table, partition)
    return dropped


def _cluster_hosts(settings: ClickHouseSettings, cluster: str) -> list[ShardHost]:
    """The hosts of ``cluster``, asked of the server of ``settings``."""
    entry = ClickHouseBackend.connect(settings, database="system")
    try:
        return cluster_shards(entry, cluster)
    finally:
        entry.close()


def _connect_host(
    settings: ClickHouseSettings, host: ShardHost, cluster: str, database: str, *, create: bool
) -> QueryBackend:
    """``database`` on ``host`` alone (no ``alt_hosts``), as the user of ``settings``."""
    node = settings.model_copy(update={"host": host.host, "port": host.port, "alt_hosts": None})
    try:
        return ClickHouseBackend.connect(node, database=database, create_database=create)
    except QueryError as exc:
        raise QueryError(
            f"shard {host.shard} ({host.host}:{host.port}) of {cluster}: {exc}", exc.code
        ) from exc


def _distributed_columns(rest: str) -> str:
    """The column list of a CREATE TABLE (``rest`` follows the name), for its Distributed twin.

    A MATERIALIZED column becomes ALIAS: a Distributed table computes its MATERIALIZED
    columns and forwards them, which the shard's table refuses ("Cannot insert column
    version, because it is MATERIALIZED column", 18.16); an ALIAS is never forwarded,
    the shard computes the stored value, and reads through the Distributed table get the
    same expression's value. DEFAULT columns are computed and forwarded: same value.
    """
    start = rest.index("(")
    depth = 0
    quote: str | None = None
    for i in range(start, len(rest)):
        char = rest[i]
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return _MATERIALIZED.sub("ALIAS", rest[start : i + 1])
    raise ShardingError(f"unbalanced column list: {rest[:80]}")


def _local_sources(select: str, database: str) -> str:
    """``select`` reading the local tables and views, qualified with ``database``.

    Qualified because a shard runs the view for a Distributed query in the session of
    the Distributed connection, whose current database is not necessarily ``database``.
    """

    def local(match: re.Match[str]) -> str:
        keyword, space, name = match.groups()
        if name in SHARDING_KEYS or name in SHARD_LOCAL_VIEWS:
            return f"{keyword}{space}{database}.{name}{LOCAL_SUFFIX}"
        if name in CROSS_SHARD_VIEWS:
            raise ShardingError(f"a shard-local view cannot read the cross-shard view {name}")
        return match.group(0)

    return _SOURCE.sub(local, select)


def _check_identifier(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ShardingError(f"not a plain {what} name: {name!r}")
