"""Retention (``imgov db drop-before``) on the cluster layouts, on real servers.

* Sharded (cluster ``imgov_sharded``: shard 1 = ch1 127.0.0.1:19011, shard 2 = ch2
  127.0.0.1:19021, created by ``imgov db migrate --cluster imgov_sharded --sharded``): the
  months live in the ``_local`` tables of each shard. The command, pointed at ch2 with ch1
  as its alternative host, recognises the layout, drops November 2023 from every
  ``_local`` table on BOTH shards (each host reached alone) and reports each host; January
  2024 stays on both. Running it again drops nothing.
* Replicated (cluster ``imgov_replicated``, ``imgov db migrate --cluster``): the command
  drops the month on ch1 only; replication removes it from ch2, and running the command
  again through ch2 drops nothing and does not fail.

Needs the cluster (``make cluster-up``); the replicated case needs ZooKeeper too.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from schemas.units import DAY_MS
from sinks.clickhouse.migrate import PARTITIONED_TABLES
from sinks.clickhouse.rows import KPI_COLUMNS, kpi_row
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.sharded import LOCAL_SUFFIX
from sinks.query import ClickHouseBackend
from streams.paths import REPO_ROOT
from tests.cluster.conftest import require_cluster_service
from tests.cluster.harness import HOST, NODES, ZOOKEEPER_PORT, drop_cluster_database, query_node
from tests.integration.test_live_harness import IMGOV
from tests.unit.sinks import factory

NOVEMBER_2023 = 1_698_796_800_000  # 2023-11-01 00:00 UTC
JANUARY_2024 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
EVENT_COLUMNS = (
    "site_id",
    "study_uid",
    "event_id",
    "event_type",
    "occurred_at_ms",
    "status",
    "payload",
    "source_topic",
    "source_partition",
    "source_offset",
    "ingested_at_ms",
)
STUDIES = 40
"""Studies per month: enough that both shards hold some of each month."""

_DROPPED = re.compile(r"^dropped (\w+) partition (\d+)(?: on shard (\d+) ([\d.]+):(\d+))?$", re.M)


@pytest.fixture(autouse=True)
def _cluster_up() -> None:
    for node, port in NODES.items():
        require_cluster_service(f"ClickHouse ch{node}", HOST, port)


def _env(node: int, database: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGOV_CLICKHOUSE_")}
    env.update(
        IMGOV_CLICKHOUSE_HOST=HOST,
        IMGOV_CLICKHOUSE_PORT=str(NODES[node]),
        IMGOV_CLICKHOUSE_DATABASE=database,
        **extra,
    )
    return env


def _imgov(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [IMGOV, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"imgov {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _write_two_months(node: int, database: str) -> None:
    """Events of STUDIES studies and a few KPI windows in November 2023 and January 2024."""
    events = [
        (f"site-{i % 4}", f"study-{month}-{i}", f"event-{month}-{i}", "inference", start + i)
        for month, start in (("nov", NOVEMBER_2023), ("jan", JANUARY_2024))
        for i in range(STUDIES)
    ]
    rows = [
        (*event, "OK", "{}", "retention-test", -1, i, event[4]) for i, event in enumerate(events)
    ]
    kpis = [
        kpi_row(emission)
        for start in (NOVEMBER_2023, JANUARY_2024)
        for day in range(4)
        for emission in factory.kpi_emissions(start + day * DAY_MS)
    ]
    settings = ClickHouseSettings(
        host=HOST, port=NODES[node], database=database, alt_hosts=None, cluster=None
    )
    backend = ClickHouseBackend.connect(settings)
    try:
        backend.insert("event_log", EVENT_COLUMNS, rows)
        backend.insert("kpi_values", KPI_COLUMNS, kpis)
    finally:
        backend.close()


def _months(node: int, database: str, table: str) -> dict[int, int]:
    """``{YYYYMM: rows}`` of one table on one node (that node's own parts)."""
    rows = query_node(
        node,
        f"SELECT toUInt32(partition), sum(rows) FROM system.parts WHERE database = '{database}'"
        f" AND table = '{table}' AND active GROUP BY partition",
    )
    return {int(month): int(count) for month, count in rows}


def _has_months(node: int, database: str, table: str, months: set[int]) -> Callable[[], bool]:
    return lambda: set(_months(node, database, table)) == months


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


def _dropped(output: str) -> set[tuple[Any, ...]]:
    return {
        (int(port), table, partition) if shard else (table, partition)
        for table, partition, shard, _host, port in _DROPPED.findall(output)
    }


@pytest.fixture
def sharded_database() -> Iterator[str]:
    name = f"retention_sharded_{uuid.uuid4().hex[:10]}"
    yield name
    for node in NODES:
        query_node(node, f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def replicated_database() -> Iterator[str]:
    require_cluster_service("ZooKeeper", HOST, ZOOKEEPER_PORT)
    name = f"retention_replicated_{uuid.uuid4().hex[:10]}"
    yield name
    drop_cluster_database(name)


def test_drop_before_reaches_the_local_tables_of_every_shard(
    sharded_database: str, record_property: Callable[[str, object], None]
) -> None:
    database = sharded_database
    _imgov(_env(1, database), "db", "migrate", "--cluster", "imgov_sharded", "--sharded")
    _write_two_months(1, database)
    local_tables = [table + LOCAL_SUFFIX for table in PARTITIONED_TABLES]
    before = {
        (node, table): _months(node, database, table) for node in NODES for table in local_tables
    }
    for node in NODES:  # the rows are spread: each shard has both months of event_log
        assert set(before[node, "event_log_local"]) == {202311, 202401}, before
    expected = {
        (NODES[node], table, "202311")
        for (node, table), months in before.items()
        if 202311 in months
    }

    # Pointed at ch2, with ch1 as its alternative host: each shard must still be reached alone.
    started = time.monotonic()
    env = _env(2, database, IMGOV_CLICKHOUSE_ALT_HOSTS=f"{HOST}:{NODES[1]}")
    output = _imgov(env, "db", "drop-before", "202401", "--yes")
    elapsed_s = time.monotonic() - started
    assert _dropped(output) == expected, output
    for node, port in NODES.items():
        dropped_here = sum(1 for where, _, _ in expected if where == port)
        assert f"shard {node} {HOST}:{port}: {dropped_here} partition(s) dropped" in output, output
    assert f"{len(expected)} partition(s) dropped on 2 host(s) of imgov_sharded" in output

    # Merges may shrink a ReplacingMergeTree's row counts meanwhile: months are compared,
    # and the rows of event_log (no two rows share a key).
    for (node, table), months in before.items():
        after = _months(node, database, table)
        assert set(after) == set(months) - {202311}, (node, table, after)
        if table == "event_log_local":
            assert after[202401] == months[202401], (node, after)
    # Through the Distributed tables too: January whole, November gone.
    count = "SELECT toYYYYMM(occurred_at) AS m, count() FROM event_log GROUP BY m"
    assert query_node(1, count, database) == [(202401, STUDIES)]

    again = _imgov(env, "db", "drop-before", "202401", "--yes")
    assert _dropped(again) == set() and "0 partition(s) dropped on 2 host(s)" in again, again
    record_property(
        "measured",
        f"drop-before on the sharded layout: {len(expected)} partitions of _local tables"
        f" dropped on 2 shards in {elapsed_s:.1f} s; January 2024 kept on both",
    )


def test_drop_before_on_one_replica_is_replicated(replicated_database: str) -> None:
    database = replicated_database
    _imgov(_env(1, database), "db", "migrate", "--cluster", "imgov_replicated")
    _write_two_months(1, database)
    tables = list(PARTITIONED_TABLES)
    before = {table: _months(1, database, table) for table in tables}
    assert set(before["event_log"]) == {202311, 202401}, before
    for table, months in before.items():
        _wait_for(
            f"{table} replicated to ch2",
            _has_months(2, database, table, set(months)),
        )
    expected = {(table, "202311") for table, months in before.items() if 202311 in months}

    output = _imgov(_env(1, database), "db", "drop-before", "202401", "--yes")
    assert _dropped(output) == expected, output
    assert f"{len(expected)} partition(s) dropped" in output

    for node in NODES:
        for table, months in before.items():
            _wait_for(
                f"{table} on ch{node}: November dropped, January kept",
                _has_months(node, database, table, set(months) - {202311}),
            )
        assert _months(node, database, "event_log") == {202401: STUDIES}
    # Through the other replica: nothing left to drop, and no error.
    again = _imgov(_env(2, database), "db", "drop-before", "202401", "--yes")
    assert _dropped(again) == set() and "0 partition(s) dropped" in again, again
