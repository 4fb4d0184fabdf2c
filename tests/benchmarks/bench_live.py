"""Live pipeline benchmark: Kafka -> Faust worker -> ClickHouse (DESIGN §10).

Run ``python -m tests.benchmarks.bench_live`` with Kafka and ClickHouse up (``make up``).
Measures, in one run on the same topics:

* **ceiling**: an aiokafka consumer that only decodes and validates every input message
  with the codec (fastavro), events/s;
* **live**: one ``imgov worker`` process draining the same input (decode, join, KPIs,
  output topics, ClickHouse, state changelog, commits), events/s from its first commit
  to the last (start-up and recovery excluded), and the ratio to the ceiling;
* **latency**: p50/p99 from producing an event (1k events/s) to a lineage revision that
  contains it being visible in ClickHouse (polled every 50 ms, which adds up to 50 ms).

Appends one JSON line to ``.imgov/bench/results.jsonl``. Without the services it says
so and exits 0, unless ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

logging.getLogger("kafka").setLevel(logging.ERROR)

RESULTS = Path(".imgov") / "bench" / "results.jsonl"


def _up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


async def _ceiling(
    bootstrap: str, topics: tuple[str, ...], partitions: int, total: int
) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.codec import Codec
    from schemas.registry import registry_from_environ
    from streams.runtime.governance import build_validator, load_settings

    codec = Codec(
        registry_from_environ(os.environ), validator=build_validator(load_settings(demo=True))
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for r in records:
                    codec.decode_event(r.value, r.headers or None)
                seen += sum(len(v) for v in batch.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def _committed(env: object) -> int:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap)  # type: ignore[attr-defined]
    try:
        done = admin.list_group_offsets(env.app_id).get(env.app_id, {})  # type: ignore[attr-defined]
    finally:
        admin.close()
    inputs = set(env.topics.inputs)  # type: ignore[attr-defined]
    return sum(o.offset for tp, o in done.items() if tp.topic in inputs)


def _live_rate(env: object, total: int) -> float:
    env.start_worker("bench")  # type: ignore[attr-defined]
    first_t, first_n = None, 0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        env.assert_alive()  # type: ignore[attr-defined]
        n = _committed(env)
        now = time.monotonic()
        if n and first_t is None:
            first_t, first_n = now, n
        if n >= total:
            return (n - first_n) / max(now - (first_t or now), 1e-6)
        time.sleep(0.25)
    raise RuntimeError("the worker did not drain the input in 15 min")


async def _latency(env: object, events: list, rate: float, seconds: float) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    from tests.integration.test_live_harness import ch_client, encoded

    messages = encoded(events, env.topics)[: int(rate * seconds)]  # type: ignore[attr-defined]
    ids = [e.event_id for e in events[: len(messages)]]
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=1)  # type: ignore[attr-defined]
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    client = ch_client(env.database)  # type: ignore[attr-defined]

    async def poll() -> None:
        while len(seen) < len(sent) or len(sent) < len(messages):
            rows = await asyncio.to_thread(
                client.execute, "SELECT DISTINCT arrayJoin(event_ids) FROM lineage_history"
            )
            now = time.perf_counter()
            for (event_id,) in rows:
                if event_id in sent and event_id not in seen:
                    seen[event_id] = now
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    started = time.perf_counter()
    try:
        for i, (topic, key, value) in enumerate(messages):
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
            await producer.send(topic, value=value, key=key)
            sent[ids[i]] = time.perf_counter()
        await producer.flush()
        await asyncio.wait_for(poller, timeout=120)
    finally:
        poller.cancel()
        await producer.stop()
        client.disconnect()
    # Events that never form a lineage row alone (none here) would be missing.
    lat = sorted(seen[i] - sent[i] for i in seen)
    return {
        "events": len(lat),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def main() -> int:
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    if not (_up("127.0.0.1", 19092) and _up("127.0.0.1", 19000)):
        print(
            "bench_live: Kafka (127.0.0.1:19092) or ClickHouse (127.0.0.1:19000) is not up; "
            "start them with `make up`. Nothing measured."
        )
        return 1 if in_ci else 0

    import tempfile

    from tests.integration.test_live_harness import (
        LiveEnv,
        create_database,
        drop_database,
        encoded,
        produce,
        simulate,
    )

    days, sites, per_day = (
        int(x) for x in os.environ.get("BENCH_LIVE_SIZE", "20,3,300").split(",")
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        events = simulate(tmp / "events.jsonl", days=days, sites=sites, per_day=per_day, seed=5)
        env = LiveEnv("127.0.0.1:19092", tmp)
        create_database(env.database)
        env.create_topics()
        try:
            produce(env.bootstrap, encoded(events, env.topics))
            total = len(events)
            ceiling = asyncio.run(_ceiling(env.bootstrap, env.topics.inputs, env.partitions, total))
            live = _live_rate(env, total)
            env.stop_all()
        finally:
            env.stop_all()
            drop_database(env.database)

        lat_env = LiveEnv("127.0.0.1:19092", tmp)
        create_database(lat_env.database)
        lat_env.create_topics()
        try:
            lat_env.start_worker("latency")
            time.sleep(15)  # start-up and the first (empty) assignment
            latency = asyncio.run(_latency(lat_env, events, rate=1000.0, seconds=20.0))
        finally:
            lat_env.stop_all()
            drop_database(lat_env.database)

    result = {
        "bench": "live",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "events": total,
        "ceiling_events_per_s": round(ceiling),
        "live_events_per_s_per_worker": round(live),
        "live_to_ceiling": round(live / ceiling, 3),
        "latency_at_1k_per_s": {k: round(v, 1) for k, v in latency.items()},
        "targets": {"live_events_per_s": 20_000, "live_to_ceiling": 0.5, "p99_ms": 2000},
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
