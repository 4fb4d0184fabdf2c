"""QueryBackend: parameter substitution, chDB results and errors, error translation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.connection import ServerInfo

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


@pytest.mark.parametrize("value", [b"\x00'", {"k": 1}, {1, 2}, [1, b"x"], object()])
def test_values_without_a_sql_literal_are_refused(value: object) -> None:
    # clickhouse-driver would print them with str(): b'...' is valid-looking wrong SQL.
    with pytest.raises(TypeError, match="as a query parameter"):
        substitute_params("SELECT %(x)s", {"x": value})


def test_substitution_is_clickhouse_drivers_own() -> None:
    """chDB gets the literals the driver sends a server in the same time zone."""
    client = Client("127.0.0.1", port=1)  # never connects: substitution is client-side
    context = client.connection.context
    context.server_info = ServerInfo("ClickHouse", 18, 16, 1, 54413, "Asia/Kolkata", "x", 0)
    params: dict[str, Any] = {
        "s": "a'b\\c\nd\te\0",
        "n": None,
        "f": -1.5,
        "l": ["x", "y'"],
        "t": ("x", 2),
        "d": date(2026, 1, 2),
        "dt": datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        "u": UUID(int=1),
    }
    sql = "SELECT " + ", ".join(f"%({name})s" for name in params)
    expected = client.substitute_params(sql, params, context)
    assert substitute_params(sql, params, timezone="Asia/Kolkata") == expected
    assert "'2026-01-02 08:34:05'" in expected  # aware: in the server's zone, to the second


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


@pytest.mark.parametrize(
    "text",
    ["it's a \\ and a\nnewline", "\\'", "'\\n' \\\\ %s %(x)s", "tab\tnul\0 bell\a é ✓", ""],
)
def test_chdb_string_parameters_round_trip(chdb: ChdbBackend, text: str) -> None:
    assert chdb.execute("SELECT %(x)s AS x", {"x": text}) == (["x"], [(text,)])
    assert chdb.execute("SELECT %(x)s AS x", {"x": [text, text]})[1] == [([text, text],)]


def test_chdb_datetime_parameters_are_instants(chdb: ChdbBackend) -> None:
    moment = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    rows = chdb.execute("SELECT toUnixTimestamp(%(t)s) AS s", {"t": moment})[1]
    assert rows == [(int(moment.timestamp()),)]
    assert chdb.execute("SELECT %(b)s + 0 AS b", {"b": True})[1] == [(1,)]


class _RecordingClient:
    """Just enough of clickhouse_driver.Client for ClickHouseBackend.execute."""

    def __init__(self) -> None:
        self.connection = SimpleNamespace(hosts=[("db", 9000)])
        self.calls: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = None, **_: Any) -> tuple[list, list]:
        self.calls.append((sql, params))
        return [], []


def test_server_backend_gives_the_driver_the_same_values() -> None:
    client = _RecordingClient()
    backend = ClickHouseBackend(client, "imgov")  # type: ignore[arg-type]
    backend.execute("SELECT %(b)s, %(l)s", {"b": True, "l": [False, "x"]})
    assert client.calls == [("SELECT %(b)s, %(l)s", {"b": 1, "l": [0, "x"]})]
    with pytest.raises(TypeError):
        backend.execute("SELECT %(x)s", {"x": b"raw"})
    assert len(client.calls) == 1


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
