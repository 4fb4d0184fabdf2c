"""The sharded layout's DDL rewrite (sinks/clickhouse/sharded.py), without a server.

The server-side behaviour (FINAL and argMax through Distributed equal to a single node,
synchronous inserts, no lineage key on two shards) is tested on the cluster by
tests/cluster/test_sharded_layout.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sinks.clickhouse.migrate import (
    PARTITIONED_TABLES,
    Migration,
    drop_partitions_before,
    load_migrations,
    migrate,
    split_statements,
)
from sinks.clickhouse.rows import KPI_COLUMNS, kpi_row
from sinks.clickhouse.sharded import (
    CROSS_SHARD_VIEWS,
    LOCAL_SUFFIX,
    SHARD_LOCAL_VIEWS,
    SHARDING_KEYS,
    ShardingError,
    distributed_cluster,
    key_columns,
    sharded_cluster,
    sharded_migrations,
    sharded_statements,
)
from sinks.query import ChdbBackend
from tests.unit.sinks import factory

CLUSTER = "imgov_sharded"
DB = "imgov"
LINEAGE_KEY = ("site_id", "study_uid", "algorithm_name", "finding_code")

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\s*\(", re.I)
_CREATE_VIEW = re.compile(r"^CREATE VIEW IF NOT EXISTS (\w+) AS", re.I)
_ORDER_BY = re.compile(r"\bORDER BY \(?([\w, ]+?)\)?\s*$", re.I)


def _statements() -> list[str]:
    return [s for m in load_migrations() for s in m.statements]


def _tables() -> dict[str, str]:
    """Every table the migrations create, with its CREATE statement."""
    return {m.group(1): s for s in _statements() if (m := _CREATE_TABLE.match(s))}


def _views() -> dict[str, str]:
    """Every view the migrations create, with its latest CREATE statement."""
    return {m.group(1): s for s in _statements() if (m := _CREATE_VIEW.match(s))}


def _order_by(create: str) -> list[str]:
    match = _ORDER_BY.search(create)
    assert match is not None, create[:80]
    return [column.strip() for column in match.group(1).split(",")]


def _rewrite(statement: str) -> list[str]:
    return sharded_statements(statement, cluster=CLUSTER, database=DB)


def test_every_table_has_a_sharding_key_and_every_view_a_decision() -> None:
    assert set(_tables()) == set(SHARDING_KEYS)
    assert set(_views()) == set(SHARD_LOCAL_VIEWS) | CROSS_SHARD_VIEWS
    assert not set(SHARD_LOCAL_VIEWS) & CROSS_SHARD_VIEWS


@pytest.mark.parametrize("table", sorted(SHARDING_KEYS))
def test_sharding_key_is_a_function_of_the_row_identity(table: str) -> None:
    # ReplacingMergeTree collapses, and FINAL picks, versions of a row within one server
    # only: every version (same ORDER BY values) must hash to the same shard.
    columns = key_columns(SHARDING_KEYS[table])
    assert columns, SHARDING_KEYS[table]
    assert columns <= set(_order_by(_tables()[table])), (table, columns)


def test_one_lineage_key_lands_on_one_shard_in_every_lineage_table() -> None:
    for table in ("event_log", "lineage_history", "review_candidates", "audit_checkpoint_heads"):
        assert key_columns(SHARDING_KEYS[table]) == {"site_id", "study_uid"}, table
        assert set(LINEAGE_KEY) & set(_order_by(_tables()[table])) >= {"site_id", "study_uid"}
    # All states of one breach together: breaches_open relates OPEN to RESOLVED rows.
    assert key_columns(SHARDING_KEYS["kpi_breaches"]) == {"breach_id"}


@pytest.mark.parametrize("view", sorted(SHARD_LOCAL_VIEWS))
def test_shard_local_views_only_combine_rows_of_one_shard(view: str) -> None:
    select = _views()[view]
    identity = set(SHARD_LOCAL_VIEWS[view])
    sources = set(re.findall(r"\bFROM\s+(\w+)", select, re.I))
    assert sources, select[:80]
    for source in sources:
        assert source in SHARDING_KEYS or source in SHARD_LOCAL_VIEWS, source
        if source in SHARDING_KEYS:
            assert key_columns(SHARDING_KEYS[source]) <= identity, (view, source)
    # The identity is what the view groups or matches by.
    for column in identity:
        assert re.search(rf"\b{column}\b", select), (view, column)


def test_a_table_becomes_a_local_table_and_a_distributed_one() -> None:
    create = _tables()["lineage_history"]
    local, distributed = _rewrite(create)
    assert local == create.replace("lineage_history", "lineage_history_local", 1)
    assert "ENGINE = ReplacingMergeTree" in local
    assert local.endswith("ORDER BY (site_id, study_uid, algorithm_name, finding_code, revision)")
    columns = create[create.index("(") : create.index("\n)\n") + 2]
    assert distributed == (
        f"CREATE TABLE IF NOT EXISTS lineage_history\n{columns}\n"
        "ENGINE = Distributed(imgov_sharded, imgov, lineage_history_local, "
        "cityHash64(site_id, study_uid))"
    )


def test_a_materialized_version_is_an_alias_in_the_distributed_table() -> None:
    # 18.16's Distributed forwards MATERIALIZED columns, which the shard refuses.
    local, distributed = _rewrite(_tables()["kpi_values"])
    assert "ENGINE = ReplacingMergeTree(version)" in local
    assert "version            UInt64 MATERIALIZED toUInt64(revision) * 2 + final" in local
    assert "version            UInt64 ALIAS toUInt64(revision) * 2 + final" in distributed
    assert "MATERIALIZED" not in distributed
    assert distributed.count("DEFAULT toDateTime(") == 1  # window_start: computed, forwarded
    alter = "ALTER TABLE kpi_values ADD COLUMN v2 UInt8 MATERIALIZED final AFTER p90"
    assert _rewrite(alter)[1] == "ALTER TABLE kpi_values ADD COLUMN v2 UInt8 ALIAS final AFTER p90"


def test_a_shard_local_view_reads_local_tables_and_is_distributed() -> None:
    local, distributed = _rewrite(_views()["lineage_latest"])
    assert local.startswith("CREATE VIEW IF NOT EXISTS lineage_latest_local AS")
    assert local.count("FROM imgov.lineage_history_local") == 2
    assert not re.search(r"FROM lineage_history\b", local)
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS lineage_latest AS lineage_latest_local\n"
        "ENGINE = Distributed(imgov_sharded, imgov, lineage_latest_local)"
    )
    breaches_local, _ = _rewrite(_views()["breaches_open"])
    assert "FROM imgov.kpi_breaches_local FINAL" in breaches_local
    assert "(SELECT breach_id FROM imgov.kpi_breaches_local WHERE" in breaches_local


def test_a_cross_shard_view_is_kept_over_the_distributed_tables() -> None:
    create = _views()["model_scorecard"]
    assert _rewrite(create) == [create]
    assert "FROM lineage_latest\n" in create


def test_alter_and_drop_reach_both_layers_in_dependency_order() -> None:
    alter = next(s for s in _statements() if s.startswith("ALTER TABLE kpi_values"))
    assert _rewrite(alter) == [alter.replace("kpi_values", "kpi_values_local", 1), alter]
    assert "MATERIALIZED" not in alter
    assert _rewrite("DROP TABLE IF EXISTS kpi_final") == [
        "DROP TABLE IF EXISTS kpi_final",
        "DROP TABLE IF EXISTS kpi_final_local",
    ]
    assert _rewrite("DROP TABLE IF EXISTS something_else") == [
        "DROP TABLE IF EXISTS something_else"
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE IF NOT EXISTS new_table (a String) ENGINE = ReplacingMergeTree ORDER BY a",
        "CREATE VIEW IF NOT EXISTS new_view AS SELECT 1",
        "ALTER TABLE new_table ADD COLUMN b String",
        "TRUNCATE TABLE event_log",
    ],
)
def test_what_has_no_sharding_decision_is_refused(statement: str) -> None:
    with pytest.raises(ShardingError):
        _rewrite(statement)


def test_names_are_checked() -> None:
    with pytest.raises(ShardingError):
        sharded_statements(_tables()["event_log"], cluster="x; DROP", database=DB)
    with pytest.raises(ShardingError):
        sharded_statements(_tables()["event_log"], cluster=CLUSTER, database="a.b")


def test_sharded_migrations_keep_versions_and_stay_guarded() -> None:
    originals = load_migrations()
    rewritten = sharded_migrations(CLUSTER, DB)
    assert [(m.version, m.name) for m in rewritten] == [(m.version, m.name) for m in originals]
    assert all(a.checksum != b.checksum for a, b in zip(originals, rewritten, strict=True))
    assert sharded_migrations(CLUSTER, DB) == rewritten
    assert sharded_migrations(CLUSTER, "other")[0].checksum != rewritten[0].checksum
    for migration in rewritten:
        assert split_statements(migration.sql) == migration.statements
        for statement in migration.statements:
            # Each can run twice (migrate() skips an ADD COLUMN already applied).
            assert re.match(
                r"(CREATE (TABLE|VIEW) IF NOT EXISTS|DROP TABLE IF EXISTS|ALTER TABLE \w+ "
                r"ADD COLUMN) \w+",
                statement,
            ), statement[:80]
            # Nothing single-node is left behind: every table is local or Distributed.
            if match := _CREATE_TABLE.match(statement):
                local = match.group(1).endswith(LOCAL_SUFFIX)
                assert local != ("ENGINE = Distributed(" in statement), statement[:80]
    every = [s for m in rewritten for s in m.statements]
    distributed = [s for s in every if "ENGINE = Distributed(" in s]
    assert len(distributed) == len(SHARDING_KEYS) + len(SHARD_LOCAL_VIEWS) + 1  # kpi_final twice


def test_an_edited_migration_changes_the_sharded_checksum() -> None:
    first = load_migrations()[0]
    applied = sharded_migrations(CLUSTER, DB, [first])[0]
    # Even a comment, as in the single-node layout (the file's checksum is covered).
    commented = Migration(first.version, first.name, first.sql + "\n-- note\n", "other")
    assert sharded_migrations(CLUSTER, DB, [commented])[0].sql == applied.sql
    assert sharded_migrations(CLUSTER, DB, [commented])[0].checksum != applied.checksum


def test_the_command_needs_a_cluster_for_the_sharded_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from streams.cli.main import app

    monkeypatch.delenv("IMGOV_CLICKHOUSE_CLUSTER", raising=False)
    result = CliRunner().invoke(app, ["db", "migrate", "--sharded"])
    assert result.exit_code == 2
    assert "--sharded needs --cluster" in result.output


def test_distributed_cluster_reads_the_engine_of_either_server() -> None:
    key = SHARDING_KEYS["event_log"]
    # 18.16 writes the arguments bare, current servers quote them.
    assert distributed_cluster(f"Distributed({CLUSTER}, db, event_log_local, {key})") == CLUSTER
    assert distributed_cluster(f"Distributed('{CLUSTER}', 'db', 'event_log_local', {key})") == (
        CLUSTER
    )
    assert distributed_cluster("ReplacingMergeTree PARTITION BY toYYYYMM(x) ORDER BY y") is None
    assert distributed_cluster("ReplicatedReplacingMergeTree('/p/{shard}', '{replica}')") is None
    assert distributed_cluster("") is None


def test_retention_sees_no_sharded_layout_in_a_single_node_database(tmp_path: Path) -> None:
    backend = ChdbBackend(tmp_path / "chdb", "imgov_single")
    try:
        assert sharded_cluster(backend) is None  # no tables yet
        migrate(backend)
        assert sharded_cluster(backend) is None
    finally:
        backend.close()


def test_retention_drops_the_months_of_the_local_tables(tmp_path: Path) -> None:
    """What drop_partitions_before_sharded runs on each host, on the local tables the
    layout creates (chDB has no cluster for the Distributed half)."""
    backend = ChdbBackend(tmp_path / "chdb", "imgov_shard")
    try:
        local = re.compile(
            rf"^(CREATE|ALTER|DROP) (TABLE|VIEW) (IF (NOT )?EXISTS )?\w+{LOCAL_SUFFIX}\b"
        )
        for migration in sharded_migrations(CLUSTER, backend.database):
            for statement in migration.statements:
                if local.match(statement):
                    backend.execute(statement)
        november_2023, january_2024 = 1_700_000_000_000, 1_704_067_200_000
        rows = [
            kpi_row(factory.kpi_emissions(start)[-1]) for start in (november_2023, january_2024)
        ]
        backend.insert("kpi_values" + LOCAL_SUFFIX, KPI_COLUMNS, rows)
        local_tables = [table + LOCAL_SUFFIX for table in PARTITIONED_TABLES]
        assert drop_partitions_before(backend, 202401, local_tables) == [
            ("kpi_values_local", "202311")
        ]
        assert drop_partitions_before(backend, 202401, local_tables) == []  # run again: nothing
        _, count = backend.execute("SELECT count() FROM kpi_values_local")
        assert count == [(1,)]
    finally:
        backend.close()
