"""Wait until the Kafka broker answers a client metadata request.

Called by ``infra/kafka/kafka.sh start`` (one broker) and ``infra/kafka/cluster.sh``
(three) with the project's virtualenv interpreter (kafka-python is a project
dependency). Not part of the ``imgov`` package: it has to run before anything else is
set up.

Usage: wait_ready.py [--brokers N] [--quorum] [--in-isr NODE] BOOTSTRAP TIMEOUT_S [PID]

Exits 0 once a ``describe_cluster`` call through BOOTSTRAP returns at least one broker
(at least N unfenced brokers with ``--brokers N``), and, with ``--quorum``, the KRaft
metadata quorum has a leader, and, with ``--in-isr NODE``, broker NODE is in the ISR of
every partition it replicates (a restarted broker has caught up); 1 on timeout; 2 if
the process PID (the broker JVM) died while waiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from typing import Any


def _broker_process_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_accepts(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _unfenced(cluster: dict[str, Any]) -> int:
    return sum(not broker.get("is_fenced", False) for broker in cluster.get("brokers", ()))


def _quorum_has_leader(admin: Any) -> bool:
    quorum = admin.describe_metadata_quorum()
    partitions = [p for t in quorum.get("topics", ()) for p in t.get("partitions", ())]
    return any(p.get("error") is None and p.get("leader_id", -1) >= 0 for p in partitions)


def _in_every_isr(admin: Any, node: int) -> bool:
    # Internal topics too (__consumer_offsets): the group coordinator's log must be whole.
    for topic in admin.describe_topics():
        for partition in topic.get("partitions", ()):
            # kafka-python 3 names them replica_nodes / isr_nodes (2.x: replicas / isr).
            replicas = partition.get("replica_nodes", partition.get("replicas", ()))
            isr = partition.get("isr_nodes", partition.get("isr", ()))
            if node in replicas and node not in isr:
                return False
    return True


def _ready(bootstrap: str, args: argparse.Namespace) -> bool:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="imgov-kafka-ready",
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
            reconnect_backoff_ms=50,
            reconnect_backoff_max_ms=200,
        )
    except (KafkaError, OSError):  # KafkaTimeoutError when bootstrap fails
        return False
    try:
        if _unfenced(admin.describe_cluster()) < args.brokers:
            return False
        if args.quorum and not _quorum_has_leader(admin):
            return False
        return args.in_isr is None or _in_every_isr(admin, args.in_isr)
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wait_ready.py", usage=__doc__)
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--quorum", action="store_true")
    parser.add_argument("--in-isr", type=int, default=None)
    parser.add_argument("bootstrap")
    parser.add_argument("timeout_s", type=float)
    parser.add_argument("pid", type=int, nargs="?")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    try:
        args = _parse(argv[1:])
    except SystemExit:
        return 64
    # kafka-python logs every refused connection at ERROR while the broker boots.
    logging.disable(logging.CRITICAL)

    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline:
        if not _broker_process_alive(args.pid):
            return 2
        # The listener opens only once the broker is unfenced, so a refused connection is
        # the common case; checking the port first keeps the admin client's own
        # exponential reconnect backoff out of the measured time-to-ready.
        if _port_accepts(args.bootstrap) and _ready(args.bootstrap, args):
            return 0
        time.sleep(0.05)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
