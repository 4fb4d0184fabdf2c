"""Fault (c) of issue 19: ZooKeeper stopped for 30 s mid-stream.

Without ZooKeeper every replicated table is read-only (18.16: code 242, "Table is in
readonly mode"): the sink's inserts fail on both replicas. They must be treated as an
outage (back off, retry, offsets not committed), never as refused data (no bisection, no
dead letters). While ZooKeeper is down the group commits nothing; once it is back the
worker resumes, and each replica ends with tables equal to ``imgov replay`` of the same
input and ``imgov audit verify`` passing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster.harness import (
    ClusterEnv,
    assert_cluster_equal_to_replay,
    cluster_sh,
    query_node,
    replicas_summary,
)
from tests.integration.test_live_harness import RateProducer, encoded, simulate

OUTAGE_S = 30.0
GRACE_S = 5.0
"""A write already acknowledged when ZooKeeper stopped may still be committed this late."""


def test_zookeeper_outage_inserts_retried_not_lost(
    cluster_env: ClusterEnv, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    env = cluster_env
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, days=5, sites=3, per_day=70, seed=37)
    messages: list[tuple[str, bytes | None, bytes]] = list(encoded(events, env.topics))
    env.start_worker()
    producer = RateProducer(env.bootstrap, messages, rate=len(messages) / 20)
    producer.start()
    env.wait_for_progress({}, timeout_s=90)

    cluster_sh("zookeeper-stop")
    stopped_at = time.monotonic()
    time.sleep(GRACE_S)
    frozen = env.committed()
    while time.monotonic() - stopped_at < OUTAGE_S:
        env.assert_alive()
        time.sleep(1)
    # Nothing was committed while every insert failed: no write was taken as done.
    assert env.committed() == frozen, "offsets committed while ZooKeeper was down"
    cluster_sh("zookeeper-start")
    fault_s = time.monotonic() - stopped_at
    resumed_s = env.wait_for_progress(frozen, timeout_s=90) - stopped_at - fault_s

    producer.finish()
    env.wait_until_settled(timeout_s=150)
    env.stop_worker()
    figures = assert_cluster_equal_to_replay(env, events_file)
    # Read-only tables are an outage, not refused data: no dead letter came of it.
    rejected = query_node(
        1, f"SELECT count() FROM {env.database}.rejected_events WHERE reason = 'SINK_REJECTED'"
    )
    assert rejected[0][0] == 0, "ZooKeeper errors were treated as refused rows"

    summary = (
        f"{len(messages)} events; ZooKeeper down {fault_s:.1f} s, input committed again "
        f"{resumed_s:.1f} s after restart; rows compared ch1 {figures['rows_compared_ch1']}, "
        f"ch2 {figures['rows_compared_ch2']}; system.replicas after: "
        f"{replicas_summary(figures['replicas'])}"
    )
    print(summary)
    record_property("measured", summary)
