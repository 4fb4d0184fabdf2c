"""The sharded layout (sinks/clickhouse/sharded.py) against a single node, on real servers.

One simulated stream is replayed into a database of the single-node layout (plain tables
on one server: ch1, 127.0.0.1:19011, outside any cluster DDL) and into the sharded layout
of the cluster ``imgov_sharded`` (shard 1 = ch1 127.0.0.1:19011, shard 2 = ch2
127.0.0.1:19021), created by the real command
``imgov db migrate --cluster imgov_sharded --sharded``. The sharded side is written
twice, once through each node (a redelivery: every row arrives twice, through
different Distributed tables), so the comparison shows ReplacingMergeTree
deduplication, FINAL and argMax holding through the Distributed tables.

Checked, reading through either node:
* the compared final tables (``final_tables`` of the live tests), the cross-shard view
  ``model_scorecard``, argMax and FINAL queries straight on the Distributed tables and
  the event log equal the single node's;
* both shards hold rows of every large table, each row on the shard its sharding key
  names (``cityHash64(...) % 2``), and no lineage key, KPI window or breach is on both;
* ``imgov audit verify`` passes through the Distributed tables (hash chains and the
  signed checkpoint), on both nodes and on the single node.

Needs the cluster (``make cluster-up``, or ``bash infra/clickhouse/cluster.sh start``);
nothing here needs ZooKeeper: the sharded layout's tables are not replicated.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client

from schemas.files import read_events
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.sharded import LOCAL_SUFFIX, SHARDING_KEYS
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend
from streams.governance import (
    DEMO_SETTINGS,
    build_processor,
    build_validator,
    checkpoint_keyring,
    load_settings,
)
from streams.paths import REPO_ROOT
from streams.replay.anchor import write_replay_checkpoint
from streams.replay.driver import replay
from tests.integration.test_live_harness import (
    IMGOV,
    diff_summary,
    final_tables,
)

CLUSTER = "imgov_sharded"
SINGLE = ("127.0.0.1", 19011)
"""The reference: a database of the single-node layout on ch1 (make test-cluster stops
nothing it needs; the single-node services are down during that CI step)."""
SHARDS = (("127.0.0.1", 19011), ("127.0.0.1", 19021))
"""Shard 1 then shard 2, as in the cluster's <remote_servers>."""

LINEAGE_KEY = "site_id, study_uid, algorithm_name, finding_code"

# Compared on both sides besides final_tables: a cross-shard view (distributed
# aggregation of uniqExact / quantileExact states), argMax and FINAL straight on the
# Distributed tables, and the tables final_tables leaves out.
EXTRA_QUERIES = {
    "model_scorecard": "SELECT * FROM model_scorecard ORDER BY 1, 2, 3, 4",
    "lineage_argmax": (
        f"SELECT {LINEAGE_KEY}, max(revision),"
        " argMax(tuple(outcome, completeness, record_hash), revision)"
        f" FROM lineage_history GROUP BY {LINEAGE_KEY} ORDER BY 1, 2, 3, 4"
    ),
    "lineage_history_final": (
        f"SELECT {LINEAGE_KEY}, revision, record_hash, prev_hash FROM lineage_history FINAL"
        " ORDER BY 1, 2, 3, 4, 5"
    ),
    "event_log_final": (
        "SELECT site_id, study_uid, event_id, event_type, status, payload, occurred_at"
        " FROM event_log FINAL ORDER BY 1, 2, 3"
    ),
    "review_candidates_final": (
        f"SELECT {LINEAGE_KEY}, revision, record_hash, reason FROM review_candidates FINAL"
        " ORDER BY 1, 2, 3, 4"
    ),
    "kpi_values_final": (
        "SELECT kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code,"
        " window_start_ms, final, revision, version"
        " FROM kpi_values FINAL WHERE final = 1 ORDER BY 1, 2, 3, 4, 5, 6, 7"
    ),
    "breaches_open": "SELECT breach_id, rule_id, value FROM breaches_open ORDER BY 1",
    "counts_by_site": (
        "SELECT site_id, count(), uniqExact(study_uid), sum(time_to_result_ms)"
        " FROM lineage_latest GROUP BY site_id ORDER BY site_id"
    ),
}

# Row identities that must never be split over the shards, per local table.
ONE_SHARD_KEYS = {
    "lineage_history": "site_id, study_uid",
    "event_log": "site_id, study_uid",
    "review_candidates": "site_id, study_uid",
    "audit_checkpoint_heads": "site_id, study_uid",
    "kpi_values": (
        "kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code,"
        " window_start_ms"
    ),
    "kpi_breaches": "breach_id",
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _cluster_up() -> None:
    missing = [f"{h}:{p}" for h, p in (SINGLE, *SHARDS) if not _reachable(h, p)]
    if missing:
        message = (
            f"ClickHouse not reachable at {', '.join(missing)}: run `make cluster-up` (the cluster)"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)


def _client(node: tuple[str, int], database: str = "system") -> Client:
    host, port = node
    return Client(
        host=host,
        port=port,
        user="imgov",
        password="imgov",
        database=database,
        connect_timeout=5,
        send_receive_timeout=120,
    )


def _query(node: tuple[str, int], database: str, sql: str) -> list[tuple[Any, ...]]:
    client = _client(node, database)
    try:
        return [tuple(row) for row in client.execute(sql)]
    finally:
        client.disconnect()


def _env(node: tuple[str, int], database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGOV_CLICKHOUSE_")}
    env.update(
        IMGOV_CLICKHOUSE_HOST=node[0],
        IMGOV_CLICKHOUSE_PORT=str(node[1]),
        IMGOV_CLICKHOUSE_DATABASE=database,
    )
    return env


def _create_single(database: str) -> None:
    """The single-node layout (the migration files as they are) on the SINGLE server."""
    settings = ClickHouseSettings(
        host=SINGLE[0], port=SINGLE[1], database=database, alt_hosts=None, cluster=None
    )
    backend = ClickHouseBackend.connect(settings, create_database=True)
    try:
        migrate(backend)
    finally:
        backend.close()


def _replay(node: tuple[str, int], database: str, events: Path) -> None:
    """``replay`` of ``events`` into ``database`` on ``node``, with its audit checkpoint."""
    settings = load_settings(DEMO_SETTINGS, demo=True)
    sink = ClickHouseSink.from_settings(
        ClickHouseSettings(host=node[0], port=node[1], database=database, alt_hosts=None)
    )
    try:
        stats = replay(
            [events],
            build_processor(settings),
            sink,
            build_validator(settings),
            record_events=True,
            collect_heads=True,
        )
        sink.flush()
        write_replay_checkpoint(
            stats, sink.backend, checkpoint_keyring(settings), time.time_ns() // 1_000_000
        )
    finally:
        sink.close()


def _snapshot(
    node: tuple[str, int], database: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """final_tables (the live tests' comparison) plus EXTRA_QUERIES, read through ``node``."""
    with monkeypatch.context() as patch:
        patch.setenv("IMGOV_CLICKHOUSE_PORT", str(node[1]))
        tables = final_tables(database)
    for name, sql in EXTRA_QUERIES.items():
        tables[name] = sorted(map(repr, _query(node, database, sql)))
    return tables


def _verify(node: tuple[str, int], database: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMGOV, "audit", "verify", "--demo"],
        env=_env(node, database),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _simulate(path: Path) -> int:
    """Writes the stream (about 2,000 events, 4 sites) and returns its event count.

    A drifting site and unanswered alert channels, so that KPI breaches exist and
    ``breaches_open`` is compared too.
    """
    command = [IMGOV, "simulate", "--days", "4", "--sites", "4", "--studies-per-day", "40"]
    command += ["--seed", "19", "--drift-site", "2", "--drift-day", "1"]
    command += ["--drift-magnitude", "0.4", "--out", str(path), "-q"]
    for channel in ("WORKLIST_FLAG", "DESKTOP_WIDGET", "MOBILE_PUSH"):
        command += ["--unanswered-channel", channel]
    subprocess.run(command, check=True, cwd=REPO_ROOT, capture_output=True, timeout=120)
    return sum(1 for _ in read_events(path))


def _assert_inserts_are_synchronous(database: str) -> None:
    rows = [
        (
            "sync-site",
            f"sync-study-{i}",
            f"sync-event-{i}",
            "inference",
            0,
            "OK",
            "{}",
            "t",
            -1,
            i,
            0,
        )
        for i in range(40)
    ]
    columns = ["site_id", "study_uid", "event_id", "event_type", "occurred_at_ms", "status"]
    columns += ["payload", "source_topic", "source_partition", "source_offset", "ingested_at_ms"]
    backend = ClickHouseBackend.connect(
        ClickHouseSettings(host=SHARDS[0][0], port=SHARDS[0][1], database=database)
    )
    try:
        backend.insert("event_log", columns, rows)
    finally:
        backend.close()
    # At once, no waiting: an asynchronous insert would still be queued on ch1's disk.
    landed = [
        _query(node, database, "SELECT count() FROM event_log_local WHERE site_id = 'sync-site'")[
            0
        ][0]
        for node in SHARDS
    ]
    assert sum(landed) == len(rows) and all(landed), landed
    for node in SHARDS:
        client = _client(node, database)
        try:
            client.execute("TRUNCATE TABLE event_log_local")
        finally:
            client.disconnect()


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:10]
    single, sharded = f"single_{suffix}", f"sharded_{suffix}"
    yield single, sharded
    for node in SHARDS:
        client = _client(node)
        try:
            client.execute(f"DROP DATABASE IF EXISTS {sharded}")
            if node == SINGLE:
                client.execute(f"DROP DATABASE IF EXISTS {single}")
        finally:
            client.disconnect()


def test_sharded_layout_equals_a_single_node(
    tmp_path: Path,
    databases: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    single, sharded = databases
    events = tmp_path / "events.jsonl"
    simulated = _simulate(events)

    # The layout, by the real command, on every shard (through ch1: it asks ch1 for the
    # cluster's hosts). Running it again changes nothing.
    migrate = [IMGOV, "db", "migrate", "--cluster", CLUSTER, "--sharded"]
    for _ in range(2):
        done = subprocess.run(
            migrate, env=_env(SHARDS[0], sharded), cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for node in SHARDS:
        # `db status` recognises the layout from the recorded checksums, on every node.
        status = subprocess.run(
            [IMGOV, "db", "status", "--cluster", CLUSTER],
            env=_env(node, sharded),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"layout: sharded on {CLUSTER}" in status.stdout, status.stdout
        assert "pending" not in status.stdout and "changed" not in status.stdout, status.stdout
        engines = dict(
            _query(
                node,
                "system",
                f"SELECT name, engine FROM system.tables WHERE database = '{sharded}'",
            )
        )
        for table in SHARDING_KEYS:
            assert engines[table] == "Distributed" and engines[table + LOCAL_SUFFIX] == (
                "ReplacingMergeTree"
            ), (node, table)

    # Synchronous Distributed inserts (the writer's flush-then-commit): once an insert
    # through one node returns, its rows are on both shards, not in a send queue.
    _assert_inserts_are_synchronous(sharded)

    started = time.monotonic()
    _create_single(single)
    _replay(SINGLE, single, events)
    # Every row twice, once through each node: FINAL must still see one copy.
    _replay(SHARDS[0], sharded, events)
    _replay(SHARDS[1], sharded, events)
    replay_s = time.monotonic() - started

    reference = _snapshot(SINGLE, single, monkeypatch)
    for part in ("lineage", "kpis", "breaches", "model_scorecard", "breaches_open"):
        assert reference[part], f"the stream produced no {part}: nothing to compare"
    for node in SHARDS:
        through = _snapshot(node, sharded, monkeypatch)
        assert through["duplicate_rows_in_lineage_latest"] == 0
        assert through == reference, diff_summary(through, reference)

    # Both shards hold rows; each row sits on the shard its key names; no key is on both.
    shares: dict[str, tuple[int, int]] = {}
    for table, key in ONE_SHARD_KEYS.items():
        local = table + LOCAL_SUFFIX
        per_shard = [
            set(_query(node, sharded, f"SELECT DISTINCT {key} FROM {local}")) for node in SHARDS
        ]
        rows = [_query(node, sharded, f"SELECT count() FROM {local}")[0][0] for node in SHARDS]
        shares[table] = (rows[0], rows[1])
        assert not per_shard[0] & per_shard[1], f"{table}: keys on both shards"
        if len(per_shard[0] | per_shard[1]) >= 20:  # fewer keys may hash to one shard
            assert all(rows), f"{table}: a shard holds no rows ({rows})"
        for index, node in enumerate(SHARDS):
            misplaced = _query(
                node,
                sharded,
                f"SELECT count() FROM {local} WHERE {SHARDING_KEYS[table]} % 2 != {index}",
            )
            assert misplaced == [(0,)], (table, node)

    verified = {}
    for node, database in ((SINGLE, single), *((n, sharded) for n in SHARDS)):
        result = _verify(node, database)
        assert result.returncode == 0, f"audit verify on {node}: {result.stdout}{result.stderr}"
        summary = re.search(
            r"of ([\d,]+) lineage keys checked.*?(\d+) partition checkpoint", result.stdout, re.S
        )
        assert summary is not None, result.stdout
        verified[node] = (summary.group(1), summary.group(2))
    # The same keys, and the replay's signed checkpoint, seen through every node.
    assert len(set(verified.values())) == 1 and verified[SINGLE][1] == "1", verified

    compared = sum(len(v) for v in reference.values() if isinstance(v, list))
    measured = (
        f"{simulated} inputs replayed once into a single node and twice into the sharded"
        f" layout in {replay_s:.1f} s; {compared} rows of final tables and queries equal"
        f" through ch1 and through ch2; audit verify OK on all three ({verified[SINGLE][0]}"
        " lineage keys, 1 checkpoint); rows per shard (ch1/ch2): "
        + ", ".join(f"{t} {a}/{b}" for t, (a, b) in shares.items())
    )
    record_property("measured", measured)
    print(f"\n{measured}")
