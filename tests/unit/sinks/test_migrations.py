"""Versioned migrations: file rules, statement splitting, idempotence (on chDB)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.clickhouse.migrate import (
    MIGRATIONS_DIR,
    Migration,
    MigrationChecksumError,
    MigrationError,
    applied_migrations,
    drop_partitions_before,
    load_migrations,
    migrate,
    split_statements,
)
from sinks.clickhouse.rows import KPI_COLUMNS, kpi_row
from sinks.query import ChdbBackend
from tests.unit.sinks import factory

# What ClickHouse 18.16 does not have (DESIGN §6): the files must run there unchanged.
FORBIDDEN_ON_18_16 = {
    "DateTime64": r"\bDateTime64\b",
    "Map": r"\bMap\s*\(",
    "TTL": r"\bTTL\b",
    "LowCardinality": r"\bLowCardinality\b",
    "CODEC": r"\bCODEC\s*\(",
    "CREATE OR REPLACE": r"\bOR\s+REPLACE\b",
    "DROP VIEW": r"\bDROP\s+VIEW\b",
    "window function": r"\bOVER\s*\(",
    "CTE": r"\bWITH\s+\w+\s+AS\s*\(",
    "RBAC": r"\b(GRANT|CREATE\s+USER|CREATE\s+ROLE)\b",
}


def test_migration_files_are_numbered_and_load_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.name and len(m.checksum) == 64 for m in migrations)


@pytest.mark.parametrize("path", sorted(MIGRATIONS_DIR.glob("*.sql")), ids=lambda p: p.name)
def test_migration_uses_only_what_clickhouse_18_16_has(path: Path) -> None:
    for statement in split_statements(path.read_text()):
        for feature, pattern in FORBIDDEN_ON_18_16.items():
            assert not re.search(pattern, statement, re.IGNORECASE), (
                f"{feature} in {statement[:80]}"
            )
        # Each statement can run twice (an interrupted migration resumes): CREATE and
        # DROP guard themselves, ADD COLUMN is skipped by migrate() when it was applied.
        assert re.match(
            r"(CREATE (TABLE|VIEW) IF NOT EXISTS|DROP TABLE IF EXISTS|ALTER TABLE \w+ ADD COLUMN)"
            r" \w+",
            statement,
        ), statement[:80]
        assert "imgov." not in statement, (
            "table names are unqualified: the runner picks the database"
        )


def test_sorting_keys_have_no_nullable_column() -> None:
    for migration in load_migrations():
        for statement in migration.statements:
            order = re.search(r"ORDER BY \((.*?)\)\s*$", statement, re.S)
            if not statement.startswith("CREATE TABLE") or order is None:
                continue
            columns = dict(re.findall(r"^\s*(\w+)\s+([A-Za-z]\w*(?:\(.*?\))?)", statement, re.M))
            for key in (k.strip() for k in order.group(1).split(",")):
                assert not columns[key].startswith("Nullable"), f"{key} in a sorting key"


def test_split_statements_respects_quotes_and_comments() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE a (x String DEFAULT 'a;b -- not a comment') ENGINE = Memory;
    SELECT 'it''s', "q;q", `b;t` -- trailing
    ;
    SELECT 'back\\'slash;';
    """
    assert split_statements(sql) == [
        "CREATE TABLE a (x String DEFAULT 'a;b -- not a comment') ENGINE = Memory",
        "SELECT 'it''s', \"q;q\", `b;t`",
        "SELECT 'back\\'slash;'",
    ]


def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ChdbBackend]:
    opened = ChdbBackend(tmp_path / "chdb", "imgov_migrations")
    try:
        yield opened
    finally:
        opened.close()


def test_migrate_applies_everything_once(backend: ChdbBackend) -> None:
    clock = iter(range(1_700_000_000_000, 1_700_000_000_100))
    applied = migrate(backend, clock_ms=lambda: next(clock))
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert migrate(backend) == []
    assert applied_migrations(backend) == {m.version: m.checksum for m in load_migrations()}
    # An interrupted run (tables there, columns added, version not recorded) resumes
    # without error.
    backend.execute("TRUNCATE TABLE schema_migrations")
    assert len(migrate(backend)) == len(load_migrations())
    columns, _ = backend.execute("SELECT * FROM kpi_final LIMIT 0")
    assert "p_value" in columns


def test_a_column_added_by_an_earlier_run_is_not_added_again(backend: ChdbBackend) -> None:
    migrate(backend)
    add = "ALTER TABLE kpi_values ADD COLUMN probe Nullable(Float64)"
    extra = Migration(99, "probe", add, "c" * 64)
    assert migrate(backend, [*load_migrations(), extra]) == [extra]
    backend.execute("ALTER TABLE schema_migrations DELETE WHERE version = 99")
    backend.execute("OPTIMIZE TABLE schema_migrations FINAL")
    assert 99 not in applied_migrations(backend)
    assert migrate(backend, [*load_migrations(), extra]) == [extra]


def test_a_new_migration_is_applied_and_an_edited_one_refused(backend: ChdbBackend) -> None:
    migrate(backend)
    extra = Migration(
        99, "probe", "CREATE TABLE IF NOT EXISTS probe (x UInt8) ENGINE = Memory", "c" * 64
    )
    assert migrate(backend, [*load_migrations(), extra]) == [extra]
    edited = Migration(99, "probe", extra.sql + " ", "d" * 64)
    with pytest.raises(MigrationChecksumError, match="0099_probe"):
        migrate(backend, [*load_migrations(), edited])


def test_drop_partitions_before(backend: ChdbBackend) -> None:
    migrate(backend)
    november_2023, january_2024 = 1_700_000_000_000, 1_704_067_200_000
    rows = [kpi_row(factory.kpi_emissions(start)[-1]) for start in (november_2023, january_2024)]
    backend.insert("kpi_values", KPI_COLUMNS, rows)
    assert drop_partitions_before(backend, 202401) == [("kpi_values", "202311")]
    _, rows = backend.execute("SELECT count() FROM kpi_values")
    assert rows == [(1,)]
    with pytest.raises(MigrationError):
        drop_partitions_before(backend, 2024)
