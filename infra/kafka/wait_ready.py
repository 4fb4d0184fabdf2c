"""Wait until the Kafka broker answers a client metadata request.

Called by ``infra/kafka/kafka.sh start`` with the project's virtualenv interpreter
(kafka-python is a project dependency). Not part of the ``imgov`` package: it has to
run before anything else is set up.

Usage: wait_ready.py BOOTSTRAP TIMEOUT_S [PID]

Exits 0 once a ``describe_cluster`` call returns at least one broker; 1 on timeout;
2 if the process PID (the broker JVM) died while waiting.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time


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
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _metadata_answered(bootstrap: str) -> bool:
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
        cluster = admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 64
    bootstrap, timeout_s = argv[1], float(argv[2])
    pid = int(argv[3]) if len(argv) == 4 else None
    # kafka-python logs every refused connection at ERROR while the broker boots.
    logging.disable(logging.CRITICAL)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _broker_process_alive(pid):
            return 2
        # The listener opens only once the broker is unfenced, so a refused connection is
        # the common case; checking the port first keeps the admin client's own
        # exponential reconnect backoff out of the measured time-to-ready.
        if _port_accepts(bootstrap) and _metadata_answered(bootstrap):
            return 0
        time.sleep(0.05)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
