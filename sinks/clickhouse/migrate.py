"""Versioned schema migrations for the audit database (DESIGN §6).

The migrations are the ``NNNN_name.sql`` files in ``sinks/clickhouse/migrations``,
applied in version order. The same files run unchanged on the ClickHouse 18.16 server,
on current servers and on chDB; the tests apply them to both.

:func:`migrate` is idempotent: it records each applied version in ``schema_migrations``
(with the file's SHA-256) and skips versions already there, and every statement is
``CREATE ... IF NOT EXISTS``, ``DROP ... IF EXISTS`` or an ``ALTER TABLE t ADD COLUMN c``
that is skipped when ``t`` already has ``c`` (18.16 has no ``ADD COLUMN IF NOT EXISTS``),
so two workers migrating at the same moment, or a run interrupted half-way through a
file, end in the same schema. A file edited after it was
applied is refused (:class:`MigrationChecksumError`): a change is a new migration.

Retention (no TTL on 18.16): :func:`drop_partitions_before` drops whole months.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.errors import ImgovError
from sinks.query import QueryBackend

__all__ = [
    "BOOTSTRAP_SQL",
    "MIGRATIONS_DIR",
    "MIGRATIONS_TABLE",
    "PARTITIONED_TABLES",
    "Migration",
    "MigrationChecksumError",
    "MigrationError",
    "applied_migrations",
    "drop_partitions_before",
    "load_migrations",
    "migrate",
    "split_statements",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""Where the ``NNNN_name.sql`` files live."""

MIGRATIONS_TABLE = "schema_migrations"

BOOTSTRAP_SQL = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version        UInt32,
    name           String,
    checksum       String,
    applied_at_ms  Int64,
    applied_at     DateTime('UTC') DEFAULT toDateTime(intDiv(applied_at_ms, 1000), 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""

PARTITIONED_TABLES = (
    "event_log",
    "lineage_history",
    "kpi_values",
    "kpi_breaches",
    "rejected_events",
    "review_candidates",
    "audit_checkpoints",
    "audit_checkpoint_heads",
)
"""Tables partitioned by month (``toYYYYMM``), in the order retention drops them."""

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(ImgovError):
    """The migrations could not be loaded or applied."""


class MigrationChecksumError(MigrationError):
    """An applied migration's file has changed since it was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    Attributes:
        version: the number the file name starts with.
        name: the rest of the file name, without ``.sql``.
        sql: the file's text.
        checksum: SHA-256 hex of the text.
    """

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def statements(self) -> list[str]:
        """The file's statements, comments removed, in order."""
        return split_statements(self.sql)

    def rewritten(self, statements: Sequence[str]) -> Migration:
        """Returns this migration in another layout: the same version and name, ``statements``
        as its SQL, and a checksum over the file's checksum and that text, so a database
        migrated in one layout refuses another (``MigrationChecksumError``) and an edited
        file is refused in every layout."""
        text = "".join(f"{sql};\n\n" for sql in statements)
        checksum = hashlib.sha256(f"{self.checksum}\n{text}".encode()).hexdigest()
        return Migration(self.version, self.name, text, checksum)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> tuple[Migration, ...]:
    """Returns the migrations in ``directory``, sorted by version.

    Raises:
        MigrationError: a file name does not match ``NNNN_name.sql`` or a version repeats.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version} appears twice")
        sql = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(sql.encode("utf-8")).hexdigest()
        migrations[version] = Migration(version, match.group(2), sql, checksum)
    return tuple(migrations[v] for v in sorted(migrations))


def split_statements(sql: str) -> list[str]:
    """Returns the statements of a SQL script: ``--`` comments removed, split on ``;``.

    Quotes (``'...'``, ``"..."``, backticks) are respected, so a ``;`` or ``--``
    inside a string literal is kept.
    """
    statements: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(sql):
        char = sql[i]
        if quote is not None:
            current.append(char)
            if char == "\\" and i + 1 < len(sql):
                current.append(sql[i + 1])
                i += 1
            elif char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
            current.append(char)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            continue
        elif char == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current))
    return [_normalise(s) for s in statements if s.strip()]


def _normalise(statement: str) -> str:
    lines = [line.rstrip() for line in statement.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def applied_migrations(backend: QueryBackend) -> dict[int, str]:
    """Returns ``{version: checksum}`` of the migrations recorded in the database.

    Raises:
        QueryError: the table cannot be read (run :func:`migrate` first).
    """
    _, rows = backend.execute(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} FINAL")
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(
    backend: QueryBackend,
    migrations: Sequence[Migration] | None = None,
    *,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    on_applied: Callable[[Migration], None] | None = None,
    bootstrap: str = BOOTSTRAP_SQL,
) -> list[Migration]:
    """Applies the migrations not yet recorded in ``backend``'s database.

    Args:
        backend: where to apply them; its current database is the target.
        migrations: defaults to :func:`load_migrations`.
        clock_ms: wall clock for ``applied_at_ms``.
        on_applied: called after each migration is recorded (progress output).
        bootstrap: the statement creating the ``schema_migrations`` table; the replicated
            layout (:mod:`sinks.clickhouse.cluster_ddl`) passes its replicated form.

    Returns:
        The migrations applied by this call, in order; empty when up to date.

    Raises:
        MigrationChecksumError: an applied migration's file changed.
        QueryError: a statement failed (the failed migration is not recorded; fixing
            the cause and migrating again resumes with it).
    """
    todo = list(load_migrations() if migrations is None else migrations)
    backend.execute(bootstrap)
    applied = applied_migrations(backend)
    for migration in todo:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationChecksumError(
                f"migration {migration.version:04d}_{migration.name} was changed after it was "
                f"applied to {backend.database}: add a new migration instead of editing it"
            )
    done: list[Migration] = []
    for migration in todo:
        if migration.version in applied:
            continue
        for statement in migration.statements:
            if not _column_exists(backend, statement):
                backend.execute(statement)
        backend.insert(
            MIGRATIONS_TABLE,
            ("version", "name", "checksum", "applied_at_ms"),
            [(migration.version, migration.name, migration.checksum, clock_ms())],
        )
        done.append(migration)
        if on_applied is not None:
            on_applied(migration)
    return done


# Also the replicated layout's form: ALTER TABLE db.t ON CLUSTER c ADD COLUMN ...
_ADD_COLUMN = re.compile(
    r"^ALTER\s+TABLE\s+(?:\w+\.)?(\w+)\s+(?:ON\s+CLUSTER\s+\w+\s+)?ADD\s+COLUMN\s+(\w+)\s",
    re.IGNORECASE,
)


def _column_exists(backend: QueryBackend, statement: str) -> bool:
    """Returns whether ``statement`` adds a column that its table already has."""
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.groups()
    _, rows = backend.execute(
        "SELECT count() FROM system.columns "
        f"WHERE database = '{backend.database}' AND table = '{table}' AND name = '{column}'"
    )
    return bool(rows[0][0])


def drop_partitions_before(
    backend: QueryBackend, before_yyyymm: int, tables: Sequence[str] = PARTITIONED_TABLES
) -> list[tuple[str, str]]:
    """Drops every monthly partition older than ``before_yyyymm`` (retention without TTL).

    Lineage revisions are partitioned by ``updated_at``: dropping a month may remove
    the early revisions of keys whose later revisions are kept, which ``imgov audit
    verify`` then reports as missing. Keep at least ``lineage_retention`` plus one
    month beyond the period you need to verify.

    Returns:
        ``(table, partition)`` for every partition dropped.

    Raises:
        MigrationError: ``before_yyyymm`` is not a plausible YYYYMM.
        QueryError: a DROP PARTITION failed.
    """
    year, month = divmod(before_yyyymm, 100)
    if not (1970 <= year <= 9999 and 1 <= month <= 12):
        raise MigrationError(f"not a YYYYMM month: {before_yyyymm}")
    dropped: list[tuple[str, str]] = []
    for table in tables:
        _, rows = backend.execute(
            "SELECT DISTINCT partition FROM system.parts "
            "WHERE database = %(db)s AND table = %(table)s AND active",
            {"db": backend.database, "table": table},
        )
        for (partition,) in sorted(rows):
            if str(partition).isdigit() and int(partition) < before_yyyymm:
                backend.execute(f"ALTER TABLE {table} DROP PARTITION {int(partition)}")
                dropped.append((table, str(partition)))
    return dropped


def utc_yyyymm(epoch_ms: int) -> int:
    """Returns the YYYYMM of an epoch-millisecond instant in UTC."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.year * 100 + moment.month
