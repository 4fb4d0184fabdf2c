"""Run SQL against the audit database, embedded (chDB) or on a ClickHouse server.

``QueryBackend`` is the one seam the CLI (``imgov query``, ``imgov db migrate``), the
migration runner and ``imgov audit verify`` talk through; the two implementations are
:class:`ChdbBackend` (a chDB data directory, opened in this process) and
:class:`ClickHouseBackend` (clickhouse-driver over the native protocol).

Parameters use the pyformat style of clickhouse-driver (``WHERE site_id = %(site)s``)
on both backends, substituted on the client side (ClickHouse 18.16 has no server-side
query parameters) by clickhouse-driver's own escaping: the driver does it for the server,
:func:`substitute_params` calls the same code for chDB. Rows are never inlined as
``INSERT ... VALUES (...)`` text: against 18.16 that hangs clickhouse-driver;
:meth:`QueryBackend.insert` passes them as data.

Exceptions::

    ImgovError
    └── QueryError                  the statement failed; ``code`` is ClickHouse's error code
        ├── BackendUnavailableError the server (or the chDB directory) cannot be reached
        │                           now; retrying later may succeed
        └── DataRefusedError        a value in the rows was refused (type, range, parse):
                                    the same rows fail again, the others would not
                                    (:mod:`sinks.refusals` splits the batch)

chDB quirks handled here: one process may have ONE chDB data directory open at a time
(opening a second path, or ``chdb.query`` on ``:memory:``, fails until every connection
to the first is closed), and one data directory may be open in ONE process at a time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable
from uuid import UUID

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.util.escape import escape_params

from schemas.errors import ImgovError
from sinks.clickhouse.settings import ClickHouseSettings

__all__ = [
    "BackendUnavailableError",
    "ChdbBackend",
    "ClickHouseBackend",
    "DataRefusedError",
    "QueryBackend",
    "QueryError",
    "QueryResult",
    "is_refusal",
    "is_transient",
    "substitute_params",
]

QueryResult: TypeAlias = tuple[list[str], list[tuple[Any, ...]]]
"""Column names and rows; both empty for a statement that returns nothing."""

# Server error codes that mean "not now" rather than "never": timeouts (159, 160, 209),
# too many simultaneous queries (202), network (210), memory limit (241), too many parts
# (252), table read-only (242: a replica lost ZooKeeper), no ZooKeeper (225, 999), an
# insert whose outcome is unknown (319), a query cancelled by a shutting-down server (394),
# a shard of a Distributed table that no replica of answers (279, the sharded layout).
_TRANSIENT_CODES = frozenset({159, 160, 202, 209, 210, 225, 241, 242, 252, 279, 319, 394, 999})

# Error codes that blame a value in the rows, never the statement or the server: parse
# errors (6, 27, 38, 41, 72), type mismatch (53), out of bound or range (69, 321),
# conversion (70), incorrect data (117), arrays or strings too large (128, 131), array
# sizes that differ (190), NULL in a non-Nullable column (349), a DEFAULT expression's
# throwIf (395), a constraint (469), an unknown Enum element (691). An unknown table,
# column, user or grant is not among them: splitting cannot help, the batch waits.
_REFUSAL_CODES = frozenset(
    {6, 27, 38, 41, 53, 69, 70, 72, 117, 128, 131, 190, 321, 349, 395, 469, 691}
)

# clickhouse-driver serialises rows in the client: a value its column cannot encode
# raises one of these before anything reaches the server (e.g. TypeMismatchError for an
# int out of range, TooLargeStringSize for a FixedString, LogicalError for an unknown
# Enum element, UnicodeEncodeError for a lone surrogate, AttributeError for a None).
_CLIENT_REFUSALS: tuple[type[BaseException], ...] = (
    ch_errors.TypeMismatchError,
    ch_errors.TooLargeStringSize,
    ch_errors.LogicalError,
    ch_errors.CannotParseUuidError,
    ch_errors.CannotParseDomainError,
    TypeError,
    ValueError,
    AttributeError,
    ArithmeticError,
    LookupError,
    struct.error,
)


class QueryError(ImgovError):
    """A statement failed.

    Attributes:
        code: ClickHouse's numeric error code, when the engine gave one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class BackendUnavailableError(QueryError):
    """The server or the chDB data directory cannot be used right now."""


class DataRefusedError(QueryError):
    """A value in the inserted rows was refused (by the server or the client's encoder).

    Inserting the same rows fails again; rows without the offending values would not.
    """


def is_transient(exc: BaseException) -> bool:
    """Returns whether a clickhouse-driver (or socket) error may go away on retry."""
    if isinstance(exc, ch_errors.ServerException):
        return exc.code in _TRANSIENT_CODES
    return isinstance(
        exc,
        ch_errors.NetworkError
        | ch_errors.SocketTimeoutError
        | ch_errors.UnexpectedPacketFromServerError
        | EOFError
        | OSError,
    )


def is_refusal(exc: BaseException) -> bool:
    """Returns whether a clickhouse-driver (or encoding) error blames a value in the rows.

    Only meaningful for an insert: the statement is fixed, so a parse, type or range
    error comes from the data, and the rows without the offending values would pass.
    """
    if isinstance(exc, ch_errors.ServerException):
        return exc.code in _REFUSAL_CODES
    return isinstance(exc, _CLIENT_REFUSALS) and not is_transient(exc)


def translate_driver_error(exc: BaseException, what: str) -> QueryError:
    """Returns the imgov exception for a clickhouse-driver failure (raise it ``from exc``)."""
    code = getattr(exc, "code", None)
    # 18.16 appends a C++ stack trace to every server error: keep the message only.
    text = " ".join(str(exc).split("Stack trace:")[0].split()) or type(exc).__name__
    if is_transient(exc):
        cls: type[QueryError] = BackendUnavailableError
    elif is_refusal(exc):
        cls = DataRefusedError
        if code is None:  # a Python error while encoding: name it, the text may not
            text = f"{type(exc).__name__}: {text}"
    else:
        cls = QueryError
    text = text[:1000] + _tls_hint(text)
    return cls(f"{what}: {text}", code=code if isinstance(code, int) else None)


def _tls_hint(text: str) -> str:
    """Which ``IMGOV_CLICKHOUSE_*`` setting a TLS handshake failure points at, if any."""
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            " (the server's certificate was not accepted: IMGOV_CLICKHOUSE_CA_CERTS must be "
            "the CA that signed it, and IMGOV_CLICKHOUSE_HOST a name or address it lists)"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return (
            " (no TLS on this port: with IMGOV_CLICKHOUSE_SECURE=true, IMGOV_CLICKHOUSE_PORT "
            "must be the server's tcp_port_secure)"
        )
    return ""


# What clickhouse-driver's escape_param turns into a literal; it formats anything else
# with str(), which for bytes (b'...') or an arbitrary object is valid-looking wrong SQL.
_PARAM_TYPES = (str, int, float, date, time, UUID)  # a datetime is a date


def _driver_value(value: object) -> object:
    if isinstance(value, bool):
        # 1/0, not the driver's True/False: servers before 21.12 have no Bool literals.
        return int(value)
    if value is None or isinstance(value, _PARAM_TYPES):
        return value
    if isinstance(value, Enum):
        return _driver_value(value.value)
    if isinstance(value, list | tuple):
        return type(value)(_driver_value(item) for item in value)
    raise TypeError(f"cannot pass a {type(value).__name__} as a query parameter")


def _driver_params(params: Mapping[str, object]) -> dict[str, object]:
    """Returns ``params`` ready for clickhouse-driver's escaping.

    Raises:
        TypeError: a value (bytes, a dict, a set, ...) has no SQL literal.
    """
    return {name: _driver_value(value) for name, value in params.items()}


@lru_cache(maxsize=4)
def _escape_context(timezone: str) -> Context:
    # escape_param reads one thing of a connection: the server's time zone, into which it
    # converts aware datetimes. chDB has no handshake to report it; the caller supplies it.
    context = Context()
    context.server_info = ServerInfo(
        name="chDB",
        version_major=0,
        version_minor=0,
        version_patch=0,
        revision=0,
        timezone=timezone,
        display_name="chDB",
        used_revision=0,
    )
    return context


def substitute_params(
    sql: str, params: Mapping[str, object] | None, *, timezone: str = "UTC"
) -> str:
    """Returns ``sql`` with ``%(name)s`` placeholders replaced by SQL literals.

    The literals are clickhouse-driver's (``escape_params``), as the driver writes them
    for a server whose time zone is ``timezone``: strings quoted with backslash escapes,
    lists as ``[...]``, tuples as ``(...)``, aware datetimes converted to ``timezone``
    to the second. Without params, ``sql`` is returned unchanged (``%%`` included),
    as the driver does.

    Raises:
        TypeError: a value (bytes, a dict, a set, ...) has no SQL literal.
    """
    if not params:
        return sql
    return sql % escape_params(_driver_params(params), _escape_context(timezone))


@runtime_checkable
class QueryBackend(Protocol):
    """Somewhere the audit database lives.

    Attributes:
        database: the database unqualified table names refer to.
    """

    database: str

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> QueryResult:
        """Runs one statement and returns its columns and rows.

        Raises:
            BackendUnavailableError: the backend cannot be reached now.
            QueryError: the statement failed.
        """
        ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Inserts rows (values in ``columns`` order) as data, never as SQL text.

        Raises:
            BackendUnavailableError: the backend cannot be reached now.
            QueryError: the rows were rejected.
        """
        ...

    def close(self) -> None:
        """Releases the connection."""
        ...


_INSERT_SETTINGS = {"insert_distributed_sync": 1}
"""An insert into a Distributed table (sinks.clickhouse.sharded) returns only once every
shard has written its rows, not once they are queued on the receiving server's disk:
the writer's flush-then-commit needs the rows on their shard. No effect on other tables;
ClickHouse 18.16 has the setting, newer servers keep the name."""


class ClickHouseBackend:
    """A ClickHouse server reached with clickhouse-driver (any version from 18.16).

    Args:
        client: a connected (or lazily connecting) clickhouse-driver client whose
            database is ``database``.
        database: the database the client uses.
    """

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self.database = database

    @classmethod
    def connect(
        cls,
        settings: ClickHouseSettings,
        *,
        database: str | None = None,
        create_database: bool = False,
        send_receive_timeout_s: float = 300.0,
    ) -> ClickHouseBackend:
        """Returns a backend for ``settings`` (``IMGOV_CLICKHOUSE_*``).

        Args:
            settings: host, port, user, password and default database.
            database: overrides ``settings.database``.
            create_database: run ``CREATE DATABASE IF NOT EXISTS`` first (through the
                ``system`` database, which every 18.16 user may open).

        Raises:
            BackendUnavailableError: the server does not answer.
            QueryError: the database could not be created.
        """
        database = database or settings.database
        if create_database:
            bootstrap = cls(cls._client_for(settings, "system", send_receive_timeout_s), "system")
            try:
                bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {_identifier(database)}")
            finally:
                bootstrap.close()
        return cls(cls._client_for(settings, database, send_receive_timeout_s), database)

    @staticmethod
    def _client_for(settings: ClickHouseSettings, database: str, timeout_s: float) -> Client:
        return Client(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password.get_secret_value(),
            database=database,
            # Replicas to fail over to (cluster mode). The driver tries its hosts in turn
            # on every (re)connect, starting with the last one that answered, and every
            # failed query drops the connection: after a replica dies, the next attempt
            # of the writer's retry lands on a live one.
            alt_hosts=settings.alt_hosts or None,
            connect_timeout=5,
            send_receive_timeout=timeout_s,
            # IMGOV_CLICKHOUSE_SECURE and its files: secure, verify, ca_certs, certfile, keyfile.
            **settings.tls_options(),
        )

    @property
    def client(self) -> Client:
        """The underlying clickhouse-driver client."""
        return self._client

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> QueryResult:
        values = _driver_params(params) if params else None
        try:
            result = self._client.execute(sql, values, with_column_types=True)
        except Exception as exc:
            raise translate_driver_error(exc, f"query failed on {self._where()}") from exc
        rows, column_types = result if isinstance(result, tuple) else (result, [])
        return [name for name, _ in column_types], [tuple(row) for row in rows]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        # Columns, not rows: the driver sends the native format column by column, and
        # transposing once here (zip in C) spares it a per-value pass in Python.
        data = list(zip(*rows, strict=True))
        try:
            self._client.execute(
                sql, data, columnar=True, types_check=False, settings=_INSERT_SETTINGS
            )
        except Exception as exc:
            raise translate_driver_error(
                exc, f"insert into {table} failed on {self._where()}"
            ) from exc

    def close(self) -> None:
        self._client.disconnect()

    def _where(self) -> str:
        # The host the client is on (or tries first) now: with alt_hosts it changes on
        # failover, and the driver keeps that host first in its deque.
        hosts = getattr(self._client.connection, "hosts", None) or [("?", "?")]
        host, port = hosts[0]
        return f"ClickHouse {host}:{port}/{self.database}"


class ChdbBackend:
    """A chDB (embedded ClickHouse) data directory, opened in this process.

    Args:
        path: the data directory; created when missing.
        database: created when missing and made the current database.

    Raises:
        BackendUnavailableError: another process has the directory open, or this
            process has another chDB directory open.
    """

    def __init__(self, path: Path | str, database: str = "imgov") -> None:
        import chdb  # deferred: importing chdb starts an embedded engine

        self.path = Path(path)
        self.database = database
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._conn: Any = chdb.connect(str(self.path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise BackendUnavailableError(
                f"cannot open chDB data directory {self.path}: {_first_line(exc)} (chDB allows "
                "one data directory per process and one process per data directory: close "
                "the other sink or session, or stop the other process)"
            ) from exc
        try:
            self._run(f"CREATE DATABASE IF NOT EXISTS {_identifier(database)}")
            self._run(f"USE {_identifier(database)}")
            # 64-bit integers as JSON numbers, so results need no per-type conversion.
            self._run("SET output_format_json_quote_64bit_integers = 0")
            # What a server reports in its handshake, for datetime parameters.
            self._timezone = self._run("SELECT timezone()", "TabSeparated").decode().strip()
        except Exception:
            self.close()
            raise

    @property
    def connection(self) -> Any:
        """The chDB connection (``chdb.state.sqlitelike.Connection``)."""
        return self._conn

    def _run(self, sql: str, fmt: str = "JSONCompact") -> bytes:
        if self._conn is None:
            raise QueryError(f"chDB data directory {self.path} is closed")
        try:
            result = self._conn.query(sql, fmt)
        except Exception as exc:
            raise QueryError(
                f"query failed on chDB {self.path}/{self.database}: {_first_line(exc)}",
                code=_chdb_code(exc),
            ) from exc
        return bytes(result.bytes()) if result is not None else b""

    def execute(self, sql: str, params: Mapping[str, object] | None = None) -> QueryResult:
        raw = self._run(substitute_params(sql, params, timezone=self._timezone))
        if not raw.strip():
            return [], []
        doc = json.loads(raw.decode("utf-8", errors="replace"), parse_int=_parse_int)
        return [column["name"] for column in doc["meta"]], [tuple(row) for row in doc["data"]]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        # ensure_ascii=False + surrogateescape: bytes values reach the engine unchanged.
        lines = (json.dumps(list(row), default=_json_default, ensure_ascii=False) for row in rows)
        data = "\n".join(lines).encode("utf-8", errors="surrogateescape")
        self.insert_data(table, columns, data, "JSONCompactEachRow")

    def insert_data(self, table: str, columns: Sequence[str], data: bytes, fmt: str) -> None:
        """Inserts pre-encoded data in ClickHouse input format ``fmt`` (e.g. ArrowStream).

        Raises:
            QueryError: the engine rejected the data.
        """
        if self._conn is None:
            raise QueryError(f"chDB data directory {self.path} is closed")
        try:
            inserter = self._conn.send_insert(f"INSERT INTO {table} ({', '.join(columns)})", fmt)
            try:
                inserter.append(data)
                inserter.finish()
            except BaseException:
                inserter.cancel()
                raise
        except Exception as exc:
            where = f"chDB {self.path}/{self.database}"
            code = _chdb_code(exc)
            cls = DataRefusedError if code in _REFUSAL_CODES else QueryError
            raise cls(
                f"insert into {table} failed on {where}: {_first_line(exc)}", code=code
            ) from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise QueryError(f"not a plain database name: {name!r}")
    return name


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    raise TypeError(f"cannot insert a {type(value).__name__}")


def _parse_int(text: str) -> int | float:
    # ClickHouse writes the Float64 -0.0 as "-0"; only a float can be negative zero.
    return -0.0 if text == "-0" else int(text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chdb_code(exc: BaseException) -> int | None:
    text = str(exc)
    marker = "Code: "
    start = text.find(marker)
    if start < 0:
        return None
    digits = ""
    for char in text[start + len(marker) :]:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None
