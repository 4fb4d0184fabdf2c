"""The users of infra/clickhouse/users.xml against the real server (DESIGN.md sections 6, 8).

Needs the server started by ``infra/clickhouse/clickhouse.sh start``. The writer ``imgov``
creates a uniquely named table in database ``imgov`` and inserts rows as parameters
(inline ``INSERT ... VALUES (...)`` text through clickhouse-driver hangs on 18.16); the
read-only ``compliance`` user must be able to read it, over the native protocol and over
HTTP, and must get the server's READONLY error for every write.
"""

from __future__ import annotations

import base64
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

pytestmark = pytest.mark.clickhouse

# ClickHouse server error codes (src/Common/ErrorCodes.cpp), checked against 18.16.1.
READONLY = 164
DATABASE_ACCESS_DENIED = 291

HTTP_HOST = os.environ.get("IMGOV_CLICKHOUSE_HOST", "127.0.0.1")
HTTP_PORT = int(os.environ.get("IMGOV_CLICKHOUSE_HTTP_PORT", "18123"))

ROWS = [(1, "first"), (2, "second"), (3, "third")]


@pytest.fixture
def probe_table(clickhouse_writer: Client) -> Iterator[str]:
    """Creates ``imgov.<unique name>`` as the writer with ROWS in it; drops it afterwards.

    Yields:
        The table's qualified name.
    """
    table = f"imgov.users_probe_{uuid.uuid4().hex[:12]}"
    clickhouse_writer.execute(
        f"CREATE TABLE {table} (id UInt32, label String) ENGINE = MergeTree ORDER BY id"
    )
    try:
        clickhouse_writer.execute(f"INSERT INTO {table} (id, label) VALUES", ROWS)
        yield table
    finally:
        clickhouse_writer.execute(f"DROP TABLE IF EXISTS {table}")


def assert_server_error(code: int, action: Callable[[], object]) -> ServerException:
    """Runs ``action`` and returns the ServerException it must raise with ``code``."""
    with pytest.raises(ServerException) as caught:
        action()
    assert caught.value.code == code, caught.value.message
    return caught.value


# --- native protocol (clickhouse-driver) --------------------------------------------


def test_writer_creates_inserts_selects_and_drops(clickhouse_writer: Client) -> None:
    table = f"imgov.users_writer_{uuid.uuid4().hex[:12]}"
    clickhouse_writer.execute(f"CREATE TABLE {table} (id UInt32) ENGINE = MergeTree ORDER BY id")
    try:
        inserted = clickhouse_writer.execute(f"INSERT INTO {table} (id) VALUES", [(7,), (8,)])
        assert inserted == 2
        assert clickhouse_writer.execute(f"SELECT id FROM {table} ORDER BY id") == [(7,), (8,)]
    finally:
        clickhouse_writer.execute(f"DROP TABLE {table}")
    assert clickhouse_writer.execute(f"EXISTS TABLE {table}") == [(0,)]


def test_compliance_selects_rows_written_by_the_writer(
    clickhouse_compliance: Client, probe_table: str
) -> None:
    rows = clickhouse_compliance.execute(f"SELECT id, label FROM {probe_table} ORDER BY id")
    assert rows == ROWS


def test_compliance_selects_through_a_view(
    clickhouse_writer: Client, clickhouse_compliance: Client, probe_table: str
) -> None:
    view = f"{probe_table}_view"
    clickhouse_writer.execute(f"CREATE VIEW {view} AS SELECT id FROM {probe_table} WHERE id > 1")
    try:
        assert clickhouse_compliance.execute(f"SELECT id FROM {view} ORDER BY id") == [(2,), (3,)]
    finally:
        # 18.16 has no DROP VIEW; DROP TABLE drops views on every version.
        clickhouse_writer.execute(f"DROP TABLE IF EXISTS {view}")


def test_compliance_cannot_insert(clickhouse_compliance: Client, probe_table: str) -> None:
    assert_server_error(
        READONLY,
        lambda: clickhouse_compliance.execute(
            f"INSERT INTO {probe_table} (id, label) VALUES", [(9, "nope")]
        ),
    )


def test_compliance_cannot_insert_select(clickhouse_compliance: Client, probe_table: str) -> None:
    assert_server_error(
        READONLY,
        lambda: clickhouse_compliance.execute(f"INSERT INTO {probe_table} SELECT 9, 'nope'"),
    )


def test_compliance_cannot_create_table(clickhouse_compliance: Client) -> None:
    table = f"imgov.users_denied_{uuid.uuid4().hex[:12]}"
    assert_server_error(
        READONLY,
        lambda: clickhouse_compliance.execute(
            f"CREATE TABLE {table} (id UInt8) ENGINE = MergeTree ORDER BY id"
        ),
    )


def test_compliance_cannot_create_database(clickhouse_compliance: Client) -> None:
    name = f"users_denied_{uuid.uuid4().hex[:12]}"
    assert_server_error(READONLY, lambda: clickhouse_compliance.execute(f"CREATE DATABASE {name}"))


def test_compliance_cannot_drop_table(
    clickhouse_writer: Client, clickhouse_compliance: Client, probe_table: str
) -> None:
    assert_server_error(
        READONLY, lambda: clickhouse_compliance.execute(f"DROP TABLE {probe_table}")
    )
    assert clickhouse_writer.execute(f"SELECT count() FROM {probe_table}") == [(len(ROWS),)]


def test_compliance_cannot_alter(clickhouse_compliance: Client, probe_table: str) -> None:
    assert_server_error(
        READONLY,
        lambda: clickhouse_compliance.execute(f"ALTER TABLE {probe_table} DELETE WHERE id = 1"),
    )


def test_compliance_cannot_lift_readonly_with_a_setting(
    clickhouse_writer: Client, clickhouse_compliance: Client, probe_table: str
) -> None:
    # readonly=2 lets the user change settings, but never `readonly` itself: the query
    # setting is ignored (native) or refused (HTTP), and the write still fails.
    assert_server_error(
        READONLY,
        lambda: clickhouse_compliance.execute(
            f"INSERT INTO {probe_table} (id, label) VALUES",
            [(9, "nope")],
            settings={"readonly": 0},
        ),
    )
    assert_server_error(READONLY, lambda: clickhouse_compliance.execute("SET readonly = 0"))
    assert clickhouse_writer.execute(f"SELECT count() FROM {probe_table}") == [(len(ROWS),)]


def test_compliance_may_change_query_settings(
    clickhouse_compliance: Client, probe_table: str
) -> None:
    # Clients send settings with their SELECTs. (Over HTTP, readonly=1 would refuse
    # them: see test_compliance_selects_over_http_post_with_settings.)
    rows = clickhouse_compliance.execute(
        f"SELECT id FROM {probe_table} ORDER BY id", settings={"max_threads": 1}
    )
    assert rows == [(1,), (2,), (3,)]


def test_compliance_cannot_read_other_databases(clickhouse_compliance: Client) -> None:
    assert_server_error(
        DATABASE_ACCESS_DENIED,
        lambda: clickhouse_compliance.execute("SELECT count() FROM default.any_table"),
    )


# --- HTTP interface -------------------------------------------------------------------


@pytest.fixture
def compliance_http() -> Callable[..., tuple[int, str]]:
    """An HTTP caller logged in as ``compliance``: ``(sql, method="GET", **params)``.

    Returns:
        A function that returns ``(status, body)``; error statuses are returned, not raised.
    """
    try:
        socket.create_connection((HTTP_HOST, HTTP_PORT), timeout=2).close()
    except OSError:
        message = (
            f"ClickHouse HTTP is not reachable at {HTTP_HOST}:{HTTP_PORT}; "
            "start it with `infra/clickhouse/clickhouse.sh start`"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)

    auth = base64.b64encode(b"compliance:compliance").decode("ascii")

    def call(sql: str, method: str = "GET", **params: str) -> tuple[int, str]:
        query = {"database": "imgov", **params}
        data = None
        if method == "GET":
            query["query"] = sql
        else:
            data = sql.encode()
        url = f"http://{HTTP_HOST}:{HTTP_PORT}/?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Basic {auth}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return call


def test_compliance_selects_over_http(
    compliance_http: Callable[..., tuple[int, str]], probe_table: str
) -> None:
    status, body = compliance_http(f"SELECT id, label FROM {probe_table} ORDER BY id")
    assert status == 200, body
    assert body.splitlines() == ["1\tfirst", "2\tsecond", "3\tthird"]


def test_compliance_selects_over_http_post_with_settings(
    compliance_http: Callable[..., tuple[int, str]], probe_table: str
) -> None:
    status, body = compliance_http(
        f"SELECT count() FROM {probe_table}", method="POST", max_result_rows="10"
    )
    assert status == 200, body
    assert body.strip() == "3"


def test_compliance_cannot_write_over_http(
    compliance_http: Callable[..., tuple[int, str]], probe_table: str
) -> None:
    for sql in (
        f"INSERT INTO {probe_table} (id, label) VALUES (9, 'nope')",
        f"DROP TABLE {probe_table}",
        f"CREATE TABLE {probe_table}_x (id UInt8) ENGINE = Memory",
    ):
        status, body = compliance_http(sql, method="POST")
        assert status != 200, sql
        assert body.startswith(f"Code: {READONLY},"), body

    status, body = compliance_http(
        f"INSERT INTO {probe_table} (id, label) VALUES (9, 'nope')", method="POST", readonly="0"
    )
    assert body.startswith(f"Code: {READONLY},"), body
