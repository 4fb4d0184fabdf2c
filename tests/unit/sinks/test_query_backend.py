"""QueryBackend: parameter substitution, chDB results and errors, error translation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import errors as ch_errors

from sinks.clickhouse.settings import ClickHouseSettings
from sinks.query import (
    BackendUnavailableError,
    ChdbBackend,
    ClickHouseBackend,
    QueryBackend,
    QueryError,
    is_transient,
    substitute_params,
    translate_driver_error,
)


def test_substitute_params_quotes_values() -> None:
    sql = "SELECT %(s)s, %(i)s, %(f)s, %(n)s, %(b)s, %(a)s"
    params = {"s": "it's \\ x", "i": -3, "f": 0.5, "n": None, "b": True, "a": ["x", 1]}
    assert substitute_params(sql, params) == "SELECT 'it\\'s \\\\ x', -3, 0.5, NULL, 1, ['x', 1]"
    assert substitute_params("SELECT 1 %% 2", None) == "SELECT 1 %% 2"
    with pytest.raises(TypeError):
        substitute_params("SELECT %(x)s", {"x": object()})


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbBackend]:
    backend = ChdbBackend(tmp_path / "chdb", "imgov_q")
    try:
        yield backend
    finally:
        backend.close()


def test_chdb_backend_runs_queries_with_params(chdb: ChdbBackend) -> None:
    assert isinstance(chdb, QueryBackend)
    assert chdb.execute("SELECT currentDatabase() AS db") == (["db"], [("imgov_q",)])
    columns, rows = chdb.execute(
        "SELECT %(s)s AS s, toInt64(%(big)s) AS big, -0.0 AS neg_zero, [1, 2] AS arr, NULL AS n",
        {"s": "a'b", "big": 2**62},
    )
    assert columns == ["s", "big", "neg_zero", "arr", "n"]
    assert rows == [("a'b", 2**62, -0.0, [1, 2], None)]
    assert str(rows[0][2]) == "-0.0"
    assert chdb.execute("CREATE TABLE t (x String) ENGINE = Memory") == ([], [])


def test_chdb_backend_insert_keeps_bytes(chdb: ChdbBackend) -> None:
    chdb.execute("CREATE TABLE raw (k UInt8, v String) ENGINE = Memory")
    chdb.insert("raw", ("k", "v"), [(1, b'\x00\xff"\\'), (2, "é")])
    assert chdb.execute("SELECT k, hex(v) FROM raw ORDER BY k")[1] == [(1, "00FF225C"), (2, "C3A9")]


def test_chdb_errors_carry_the_code(chdb: ChdbBackend) -> None:
    with pytest.raises(QueryError) as raised:
        chdb.execute("SELECT * FROM no_such_table")
    assert raised.value.code == 60
    assert not isinstance(raised.value, BackendUnavailableError)
    chdb.close()
    with pytest.raises(QueryError, match="closed"):
        chdb.execute("SELECT 1")


def test_driver_errors_are_translated() -> None:
    refused = ch_errors.NetworkError("Connection refused (127.0.0.1:1)")
    assert is_transient(refused) and is_transient(EOFError()) and is_transient(OSError())
    error = translate_driver_error(refused, "insert failed")
    assert isinstance(error, BackendUnavailableError)
    server = ch_errors.ServerException(
        "DB::Exception: Unknown table. Stack trace:\n\n0. x", code=60
    )
    error = translate_driver_error(server, "query failed")
    assert type(error) is QueryError and error.code == 60
    assert "Stack trace" not in str(error) and "Unknown table" in str(error)
    too_many_parts = ch_errors.ServerException("DB::Exception: Too many parts", code=252)
    assert isinstance(translate_driver_error(too_many_parts, "x"), BackendUnavailableError)


def test_unreachable_server_is_backend_unavailable() -> None:
    settings = ClickHouseSettings(port=1)  # nothing listens on port 1
    backend = ClickHouseBackend.connect(settings)
    try:
        with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1\b"):
            backend.execute("SELECT 1")
        with pytest.raises(BackendUnavailableError):
            backend.insert("t", ("x",), [(1,)])
    finally:
        backend.close()
