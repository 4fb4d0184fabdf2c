"""Helpers of the cluster tests (no tests here): the replicated ClickHouse cluster.

The cluster variant of tests/integration/test_live_harness.py: the same worker, input
and comparison (``final_tables``: FINAL results), but the audit databases are created
with ``imgov db migrate --cluster`` (Replicated*MergeTree ON CLUSTER), the worker
writes to ch1 with ch2 as its alternative host, and every end check runs on BOTH
replicas: equal to ``imgov replay`` of the same input, and ``imgov audit verify``
passing on each.

Addresses are the cluster contract's (infra/clickhouse/cluster.sh); Kafka comes from
``IMGOV_KAFKA_BOOTSTRAP`` (the three-broker cluster in CI, any broker elsewhere).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_driver import Client

from sinks.clickhouse.cluster_ddl import migrate_replicated
from sinks.clickhouse.migrate import MIGRATIONS_TABLE, PARTITIONED_TABLES
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from streams.governance import DEMO_SETTINGS, build_processor, build_validator, load_settings
from streams.paths import REPO_ROOT
from streams.replay.driver import replay
from tests.integration.test_live_harness import IMGOV, LiveEnv, diff_summary, final_tables

HOST = "127.0.0.1"
NODES = {1: 19011, 2: 19021}
"""ClickHouse node number -> native port (the cluster contract)."""
ZOOKEEPER_PORT = 19181
CLUSTER = os.environ.get("IMGOV_CLICKHOUSE_CLUSTER") or "imgov_replicated"
CLUSTER_SCRIPT = REPO_ROOT / "infra" / "clickhouse" / "cluster.sh"
KAFKA_BOOTSTRAP = os.environ.get("IMGOV_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
AUDIT_TABLES = (*PARTITIONED_TABLES, MIGRATIONS_TABLE)
"""Every replicated table of the layout."""


def cluster_sh(*args: str, timeout_s: float = 180) -> str:
    """Runs ``infra/clickhouse/cluster.sh ARGS``; returns its stdout (raises on failure)."""
    done = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"cluster.sh {' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def node_pid(node: int) -> int:
    return int(cluster_sh("pid", str(node)).strip())


def node_client(node: int, database: str = "system") -> Client:
    """The admin user on one node (no alternative host: reads THAT replica)."""
    return Client(
        host=HOST,
        port=NODES[node],
        user="default",
        database=database,
        connect_timeout=5,
        send_receive_timeout=60,
    )


def query_node(node: int, sql: str, database: str = "system") -> list[tuple[Any, ...]]:
    client = node_client(node, database)
    try:
        return [tuple(row) for row in client.execute(sql)]
    finally:
        client.disconnect()


def cluster_settings(database: str) -> ClickHouseSettings:
    """The writer's settings for the cluster: ch1, failing over to ch2."""
    return ClickHouseSettings(
        host=HOST,
        port=NODES[1],
        alt_hosts=f"{HOST}:{NODES[2]}",
        cluster=CLUSTER,
        database=database,
    )


def create_cluster_database(name: str) -> None:
    """``imgov db migrate --cluster`` in-process: the replicated layout on both nodes."""
    migrate_replicated(cluster_settings(name), CLUSTER, database=name)


def drop_cluster_database(name: str) -> None:
    """Drops ``name`` everywhere (ON CLUSTER when both nodes answer, else node by node).

    Best effort (a cleanup must not hide the test's own failure), but loud: what could
    not be dropped is printed, since it stays on the cluster's disks."""
    try:
        query_node(1, f"DROP DATABASE IF EXISTS {name} ON CLUSTER {CLUSTER}")
        return
    except Exception as exc:
        print(f"DROP DATABASE {name} ON CLUSTER failed ({exc}); dropping node by node")
    for node in NODES:
        try:
            query_node(node, f"DROP DATABASE IF EXISTS {name}")
        except Exception as exc:
            print(f"could not drop {name} on ch{node}: {exc}")


@dataclass
class ClusterEnv(LiveEnv):
    """A LiveEnv whose worker writes to the replicated cluster (ch1, alternative ch2).

    A shorter idle close than the single-node tests: the whole cluster step must fit in
    a few minutes of CI, and ``wait_until_settled`` waits idle close + 10 s of calm."""

    idle_close_s: float = 8.0

    def worker_env(self, name: str) -> dict[str, str]:
        return {
            **super().worker_env(name),
            "IMGOV_CLICKHOUSE_HOST": HOST,
            "IMGOV_CLICKHOUSE_PORT": str(NODES[1]),
            "IMGOV_CLICKHOUSE_ALT_HOSTS": f"{HOST}:{NODES[2]}",
            "IMGOV_CLICKHOUSE_CLUSTER": CLUSTER,
        }

    def fingerprint(self) -> tuple[Any, ...]:
        # Through either replica: the test kills one of them while this polls.
        client = Client(
            host=HOST,
            port=NODES[1],
            alt_hosts=f"{HOST}:{NODES[2]}",
            user="imgov",
            password="imgov",
            database=self.database,
            connect_timeout=2,
            send_receive_timeout=30,
        )
        try:
            return tuple(
                client.execute(f"SELECT count() FROM {t}")[0]
                for t in ("lineage_history", "kpi_values", "rejected_events", "kpi_breaches")
            )
        finally:
            client.disconnect()


@contextmanager
def opened_cluster(env: ClusterEnv) -> Iterator[ClusterEnv]:
    """Creates the env's replicated databases and its topics; cleans up after."""
    create_cluster_database(env.database)
    create_cluster_database(env.offline_database)
    env.create_topics()
    try:
        yield env
    finally:
        env.stop_all()
        if not env.keep_databases:
            drop_cluster_database(env.database)
            drop_cluster_database(env.offline_database)


def replay_into_cluster(database: str, path: Path) -> None:
    """The offline reference: ``replay`` of the same input into a replicated database."""
    settings = load_settings(DEMO_SETTINGS, demo=True)
    sink = ClickHouseSink.from_settings(cluster_settings(database))
    try:
        replay(
            [path], build_processor(settings), sink, build_validator(settings), record_events=True
        )
    finally:
        sink.close()


@contextmanager
def _reading_node(node: int) -> Iterator[None]:
    """``final_tables`` reads the server of ``IMGOV_CLICKHOUSE_PORT``: point it at ``node``."""
    before = os.environ.get("IMGOV_CLICKHOUSE_PORT")
    os.environ["IMGOV_CLICKHOUSE_PORT"] = str(NODES[node])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("IMGOV_CLICKHOUSE_PORT", None)
        else:
            os.environ["IMGOV_CLICKHOUSE_PORT"] = before


def final_tables_on(node: int, database: str) -> dict[str, Any]:
    """``final_tables`` of ``database`` as replica ``node`` alone sees it."""
    with _reading_node(node):
        return final_tables(database)


def replicas(node: int, database: str) -> list[tuple[Any, ...]]:
    """``system.replicas`` of ``database`` on ``node``: (table, is_readonly, is_session_expired,
    queue_size, inserts_in_queue, absolute_delay, active_replicas, total_replicas)."""
    return query_node(
        node,
        "SELECT table, is_readonly, is_session_expired, queue_size, inserts_in_queue,"
        " absolute_delay, active_replicas, total_replicas FROM system.replicas"
        f" WHERE database = '{database}' ORDER BY table",
    )


def row_counts(node: int, database: str) -> dict[str, int]:
    return {
        table: int(query_node(node, f"SELECT count() FROM {database}.{table}")[0][0])
        for table in AUDIT_TABLES
    }


def wait_replicas_synced(database: str, timeout_s: float = 90) -> dict[int, list[tuple[Any, ...]]]:
    """Waits until both replicas of every table are writable, active, have an empty
    replication queue, no delay, and the same row counts; returns ``system.replicas``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            state = {node: replicas(node, database) for node in NODES}
            counts = {node: row_counts(node, database) for node in NODES}
        except Exception as exc:
            last = exc
            time.sleep(0.5)
            continue
        healthy = all(
            len(rows) == len(AUDIT_TABLES)
            and all(
                readonly == 0
                and expired == 0
                and queue == 0
                and delay == 0
                and active == total == 2
                for _, readonly, expired, queue, _, delay, active, total in rows
            )
            for rows in state.values()
        )
        if healthy and counts[1] == counts[2]:
            return state
        last = (state, counts)
        time.sleep(0.5)
    raise AssertionError(f"replicas of {database} not in sync after {timeout_s} s: {last}")


def audit_verify_on(node: int, database: str) -> subprocess.CompletedProcess[str]:
    """``imgov audit verify --demo`` against replica ``node`` alone."""
    env = {
        **os.environ,
        "IMGOV_CLICKHOUSE_HOST": HOST,
        "IMGOV_CLICKHOUSE_PORT": str(NODES[node]),
        "IMGOV_CLICKHOUSE_ALT_HOSTS": "",
        "IMGOV_CLICKHOUSE_DATABASE": database,
    }
    return subprocess.run(
        [IMGOV, "audit", "verify", "--demo"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def db_status_on(node: int, database: str) -> str:
    """The output of ``imgov db status`` against replica ``node`` alone (exit 0 asserted)."""
    env = {
        **os.environ,
        "IMGOV_CLICKHOUSE_HOST": HOST,
        "IMGOV_CLICKHOUSE_PORT": str(NODES[node]),
        "IMGOV_CLICKHOUSE_ALT_HOSTS": "",
        "IMGOV_CLICKHOUSE_CLUSTER": CLUSTER,
        "IMGOV_CLICKHOUSE_DATABASE": database,
    }
    done = subprocess.run(
        [IMGOV, "db", "status"], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_cluster_equal_to_replay(env: ClusterEnv, events_file: Path) -> dict[str, Any]:
    """After the replicas synced: each replica's live tables equal ``replay`` of the same
    input (read on ch1 and on ch2), and ``imgov audit verify`` passes on each.

    Returns figures for the test output: rows compared per replica, ``system.replicas``.
    """
    state = wait_replicas_synced(env.database)
    replay_into_cluster(env.offline_database, events_file)
    wait_replicas_synced(env.offline_database)
    figures: dict[str, Any] = {"replicas": state}
    for node in NODES:
        offline = final_tables_on(node, env.offline_database)
        live = final_tables_on(node, env.database)
        assert live["duplicate_rows_in_lineage_latest"] == 0
        assert live == offline, f"ch{node}: " + diff_summary(live, offline)
        assert live["lineage"] and live["kpis"]
        figures[f"rows_compared_ch{node}"] = sum(
            len(v) for v in live.values() if isinstance(v, list)
        )
        verified = audit_verify_on(node, env.database)
        assert verified.returncode == 0, (
            f"imgov audit verify on ch{node} exited {verified.returncode}\n"
            f"{verified.stdout[-3000:]}{verified.stderr[-3000:]}"
        )
    return figures


def replicas_summary(state: dict[int, list[tuple[Any, ...]]]) -> str:
    """One line per node: tables, and the worst queue/delay/readonly seen, active/total."""
    parts = []
    for node, rows in state.items():
        parts.append(
            f"ch{node}: {len(rows)} tables, queue_size max {max(r[3] for r in rows)},"
            f" absolute_delay max {max(r[5] for r in rows)},"
            f" readonly {sum(r[1] for r in rows)}, active/total {rows[0][6]}/{rows[0][7]}"
        )
    return "; ".join(parts)
