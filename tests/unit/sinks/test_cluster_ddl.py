"""The replicated layout's DDL rewrite, and the sink's view of a cluster (issue 19).

The rewrite runs against real servers in tests/cluster; here: what it produces from the
real migration files, and that ZooKeeper-down errors are an outage, never refused data.
"""

from __future__ import annotations

import pytest
from clickhouse_driver import errors as ch_errors

from sinks.clickhouse.cluster_ddl import (
    ClusterDDLError,
    bootstrap_sql,
    replicated_migrations,
    replicated_statement,
)
from sinks.clickhouse.migrate import _ADD_COLUMN, load_migrations, split_statements
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import BackendUnavailableError, ClickHouseBackend, translate_driver_error
from sinks.refusals import write_table


def _all_statements(cluster: str = "c1", database: str = "db1") -> list[str]:
    return [s for m in replicated_migrations(cluster, database) for s in split_statements(m.sql)]


def test_every_table_gets_the_replicated_form_of_its_engine_and_keeps_its_keys() -> None:
    originals = {
        s.split()[5]: s
        for m in load_migrations()
        for s in m.statements
        if s.upper().startswith("CREATE TABLE IF NOT EXISTS")
    }
    rewritten = [s for s in _all_statements() if s.startswith("CREATE TABLE")]
    assert len(rewritten) == len(originals) > 0
    for statement in rewritten:
        name = statement.split()[5].removeprefix("db1.")
        original = originals[name]
        assert f"CREATE TABLE IF NOT EXISTS db1.{name} ON CLUSTER c1\n" in statement
        engine = next(line for line in original.splitlines() if line.startswith("ENGINE"))
        args = engine.partition("(")[2].rstrip(")")
        path = f"'/clickhouse/tables/{{shard}}/db1/{name}', '{{replica}}'"
        expected = f"ENGINE = Replicated{engine.split()[2].split('(')[0]}({path}"
        expected += f", {args})" if args else ")"
        assert expected in statement
        # Columns, PARTITION BY and ORDER BY unchanged.
        assert statement.replace(expected, "").endswith(
            original.split("ENGINE", 1)[1].split("\n", 1)[1]
        )


def test_views_read_database_qualified_sources_and_everything_runs_on_cluster() -> None:
    statements = _all_statements()
    for statement in statements:
        assert " ON CLUSTER c1" in statement
    views = [s for s in statements if s.startswith("CREATE VIEW")]
    assert {v.split()[5] for v in views} >= {
        "db1.lineage_latest",
        "db1.kpi_final",
        "db1.breaches_open",
        "db1.model_scorecard",
    }
    for view in views:
        assert "FROM lineage_history" not in view and "FROM kpi_values" not in view
    scorecard = next(v for v in views if "db1.model_scorecard" in v)
    assert "FROM db1.lineage_latest" in scorecard
    assert "DROP TABLE IF EXISTS db1.kpi_final ON CLUSTER c1" in statements


def test_add_column_on_cluster_is_still_recognised_as_idempotent() -> None:
    alter = next(s for s in _all_statements() if s.startswith("ALTER"))
    match = _ADD_COLUMN.match(alter)
    assert match is not None and match.groups() == ("kpi_values", "p_value")


def test_the_bookkeeping_table_is_replicated_too() -> None:
    sql = bootstrap_sql("c1", "db1")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS db1.schema_migrations ON CLUSTER c1")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db1/schema_migrations'" in sql


def test_layouts_have_different_checksums_and_unknown_statements_are_refused() -> None:
    single = {m.version: m.checksum for m in load_migrations()}
    for migration in replicated_migrations("c1", "db1"):
        assert migration.checksum != single[migration.version]
    with pytest.raises(ClusterDDLError):
        replicated_statement("INSERT INTO t VALUES (1)", cluster="c1", database="db1")
    with pytest.raises(ClusterDDLError):
        replicated_statement("CREATE TABLE t (a Int8) ENGINE = Log", cluster="c1", database="d")
    with pytest.raises(ClusterDDLError):
        replicated_statement("DROP TABLE t", cluster="c1; DROP", database="db1")


def test_alt_hosts_reach_the_driver() -> None:
    settings = ClickHouseSettings(port=19011, alt_hosts="127.0.0.1:19021,127.0.0.1:19031")
    backend = ClickHouseBackend(ClickHouseBackend._client_for(settings, "imgov", 5), "imgov")
    assert list(backend.client.connection.hosts) == [
        ("127.0.0.1", 19011),
        ("127.0.0.1", 19021),
        ("127.0.0.1", 19031),
    ]


def test_alt_hosts_and_cluster_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_CLICKHOUSE_ALT_HOSTS", "127.0.0.1:19021")
    monkeypatch.setenv("IMGOV_CLICKHOUSE_CLUSTER", "imgov_replicated")
    settings = ClickHouseSettings()
    assert (settings.alt_hosts, settings.cluster) == ("127.0.0.1:19021", "imgov_replicated")


# What 18.16 answers an insert into a replicated table while ZooKeeper is down (242,
# seen in tests/cluster/test_zookeeper_outage.py) or while its session is lost/expired.
ZOOKEEPER_DOWN = [
    ch_errors.ServerException("DB::Exception: Table is in readonly mode.", code=242),
    ch_errors.ServerException("DB::Exception: Session expired (Session expired)", code=999),
    ch_errors.ServerException("DB::Exception: Cannot use ZooKeeper: no ZooKeeper", code=225),
]


@pytest.mark.parametrize("exc", ZOOKEEPER_DOWN)
def test_zookeeper_down_is_an_outage_and_is_never_split(exc: BaseException) -> None:
    error = translate_driver_error(exc, "insert into event_log failed")
    assert type(error) is BackendUnavailableError
    calls: list[int] = []

    def insert(rows: object) -> None:
        calls.append(len(rows))  # type: ignore[arg-type]
        raise error

    with pytest.raises(BackendUnavailableError):
        write_table("event_log", [(i, "x") for i in range(10)], insert, now_ms=1)
    assert calls == [10]  # one attempt, no bisection, no dead letters
