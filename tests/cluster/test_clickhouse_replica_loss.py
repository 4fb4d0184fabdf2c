"""Fault (b) of issue 19: a ClickHouse replica SIGKILLed mid-stream, restarted, catching up.

The worker writes to ch1 (its first host; ch2 is its alternative host). While input
flows, ch1 is killed by PID (no clean shutdown). The sink's next write fails, it backs
off and reconnects to ch2, and the group keeps committing input while ch1 is down: the
proof of failover, since offsets are committed only after the sink's flush. ch1 is then
restarted and catches up from ch2 through replication (its queue empties). At the end,
each replica alone holds tables equal to ``imgov replay`` of the same input, and
``imgov audit verify`` passes on each.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import (
    CLUSTER,
    HOST,
    NODES,
    ClusterEnv,
    assert_cluster_equal_to_replay,
    cluster_sh,
    db_status_on,
    node_pid,
    query_node,
    replicas_summary,
)
from tests.integration.test_live_harness import RateProducer, encoded, simulate

DOWN_AT_LEAST_S = 8.0
"""ch1 stays down at least this long, and until the group committed input without it."""


def test_replica_killed_mid_stream_fails_over_and_catches_up(
    cluster_env: ClusterEnv, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    env = cluster_env
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, days=5, sites=3, per_day=70, seed=31)
    messages: list[tuple[str, bytes | None, bytes]] = list(encoded(events, env.topics))
    env.start_worker()
    producer = RateProducer(env.bootstrap, messages, rate=len(messages) / 20)
    producer.start()

    # The sink writes through ch1: its first rows are there before anything is killed.
    env.wait_for_progress({}, timeout_s=90)
    assert query_node(1, f"SELECT count() FROM {env.database}.event_log")[0][0] > 0

    before = env.committed()
    pid = node_pid(1)
    cluster_sh("kill", "1")
    down_at = time.monotonic()
    # Failover: input committed while ch1 is dead was flushed to ch2. The first commit
    # after the kill may cover a flush that reached ch1 just before it; the next one
    # started after the kill, so only ch2 can have taken it.
    env.wait_for_progress(before, timeout_s=60)
    failover_s = env.wait_for_progress(env.committed(), timeout_s=60) - down_at
    with pytest.raises(ConnectionRefusedError):  # ch1 still dead: that flush went to ch2
        socket.create_connection((HOST, NODES[1]), timeout=2).close()
    remaining = DOWN_AT_LEAST_S - (time.monotonic() - down_at)
    if remaining > 0:
        time.sleep(remaining)
    cluster_sh("restart", "1")
    fault_s = time.monotonic() - down_at

    producer.finish()
    env.wait_until_settled(timeout_s=150)
    env.stop_worker()  # a graceful stop writes the last audit checkpoint
    figures = assert_cluster_equal_to_replay(env, events_file)
    # Either replica shows the migrations applied, in the replicated layout.
    for node in (1, 2):
        status = db_status_on(node, env.database)
        assert f"layout: replicated on {CLUSTER}" in status, status
        assert "pending" not in status and "changed" not in status, status

    summary = (
        f"{len(messages)} events; ch1 (PID {pid}) SIGKILLed, down {fault_s:.1f} s, "
        f"first commit via ch2 after {failover_s:.1f} s; rows compared "
        f"ch1 {figures['rows_compared_ch1']}, ch2 {figures['rows_compared_ch2']}; "
        f"system.replicas after: {replicas_summary(figures['replicas'])}"
    )
    print(summary)
    record_property("measured", summary)
