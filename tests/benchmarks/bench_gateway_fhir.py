"""Benchmark: the FHIR gateway, parse + map and requests through HTTP (DESIGN §10, §11).

Run ``python -m tests.benchmarks.bench_gateway_fhir`` (or ``python
tests/benchmarks/bench_gateway_fhir.py``) from the repository root. On the sample
resources of ``tests/data/fhir/good`` (a DiagnosticReport with a contained ImagingStudy,
and a transaction Bundle of seven entries giving a report and an alert), it measures,
in one process (one core):

* ``json_loads``: orjson alone (the ceiling of reading the bytes);
* ``fhir_validate``: ``parse_resource``: orjson + the fhir.resources R4B models;
* ``parse_map``: ``parse_events``: that and the mapping to contract events (the
  gateway's own ceiling);
* ``http``: requests/s of ``fhir_app`` served on 127.0.0.1 with an in-memory delivery,
  posted by an aiohttp client over keep-alive connections (``--concurrency`` in flight);
  client and server share the one core, so this is a floor of what a server gets;
* ``http_kafka``: the same into ``KafkaDelivery`` on the real broker
  (``IMGOV_KAFKA_BOOTSTRAP``, default 127.0.0.1:19092) on fresh topics, deleted
  afterwards: each request answered only once Kafka (acks=all) acknowledged its events,
  which are Avro-encoded on the way (the in-memory delivery does not encode). Skipped
  with a message when the broker is unreachable (unless ``CI=true``).

Each is reported as messages/s for the report and for the transaction. Measures run
round-robin ``--repeat`` times and the fastest run of each is kept. It prints a table and
appends one JSON line to ``.imgov/bench/results.jsonl``. Figures on a shared machine are
noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

from schemas.codec import Codec  # noqa: E402
from schemas.registry import registry_from_environ  # noqa: E402
from streams.gateway.delivery import Delivery, KafkaDelivery, MemoryDelivery  # noqa: E402
from streams.gateway.fhir import load_fhir_mapping, parse_events, parse_resource  # noqa: E402
from streams.gateway.fhir_http import FHIR_JSON, fhir_app  # noqa: E402
from tests.benchmarks.gateway_kafka import (  # noqa: E402
    kafka_bootstrap,
    kafka_unreachable,
    records_in,
    throwaway_topics,
)
from tests.benchmarks.rates import Measure, best_rates  # noqa: E402

SAMPLES = {
    "report": ("DiagnosticReport", ROOT / "tests/data/fhir/good/diagnostic-report.json"),
    "transaction": ("", ROOT / "tests/data/fhir/good/transaction-bundle.json"),
}


def _url_path(name: str) -> str:
    resource_type = SAMPLES[name][0]
    return f"/{resource_type}" if resource_type else ""


async def _http_rate(
    delivery: Delivery, path: str, body: bytes, requests: int, concurrency: int
) -> float:
    """Requests/s of ``requests`` POSTs of ``body`` to a freshly served app."""
    runner = web.AppRunner(fhir_app(load_fhir_mapping(), delivery), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/fhir{path}"
    headers = {"Content-Type": FHIR_JSON}
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            remaining = requests

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        assert response.status in (200, 201), response.status

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
    finally:
        await runner.cleanup()
    return requests / elapsed


async def _memory_rate(path: str, body: bytes, requests: int, concurrency: int) -> float:
    delivery = MemoryDelivery()
    rate = await _http_rate(delivery, path, body, requests, concurrency)
    assert delivery.dead_letters == []
    return rate


async def _kafka_rates(
    bootstrap: str, bodies: Mapping[str, bytes], events: Mapping[str, int], args: argparse.Namespace
) -> dict[str, int]:
    """Best requests/s of each sample into ``KafkaDelivery``, on throwaway topics."""
    codec = Codec(registry_from_environ(os.environ))
    rates: dict[str, int] = {}
    with throwaway_topics(bootstrap, "bench-gw-fhir-") as topics:
        delivery = await KafkaDelivery.connect(bootstrap, codec, topics)
        try:
            for name, body in bodies.items():
                runs = [
                    await _http_rate(
                        delivery, _url_path(name), body, args.requests, args.concurrency
                    )
                    for _ in range(args.repeat)
                ]
                rates[f"{name}.http_kafka"] = round(max(runs))
        finally:
            await delivery.close()
        expected = args.repeat * args.requests * sum(events.values())
        stored = records_in(bootstrap, topics.inputs)
        if stored != expected or records_in(bootstrap, [topics.dlq]):
            raise SystemExit(f"{stored} of {expected} events on Kafka, or dead letters")
    return rates


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3_000, help="parses per run")
    parser.add_argument("--requests", type=int, default=2_000, help="HTTP requests per run")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    mapping = load_fhir_mapping()
    bodies = {name: path.read_bytes() for name, (_, path) in SAMPLES.items()}
    events = {name: len(parse_events(body, mapping)) for name, body in bodies.items()}
    measures: list[Measure] = []
    n = args.messages
    for name, body in bodies.items():

        def json_loads(body: bytes = body) -> None:
            for _ in range(n):
                orjson.loads(body)

        def fhir_validate(body: bytes = body) -> None:
            for _ in range(n):
                parse_resource(body)

        def parse_map(body: bytes = body) -> None:
            for _ in range(n):
                parse_events(body, mapping)

        measures += [
            (f"{name}.json_loads", n, json_loads),
            (f"{name}.fhir_validate", n, fhir_validate),
            (f"{name}.parse_map", n, parse_map),
        ]
    results = best_rates(measures, args.repeat)
    for name, body in bodies.items():
        rates = [
            asyncio.run(_memory_rate(_url_path(name), body, args.requests, args.concurrency))
            for _ in range(args.repeat)
        ]
        results[f"{name}.http"] = round(max(rates))
    notes: list[str] = []
    bootstrap = kafka_bootstrap()
    unreachable = kafka_unreachable(bootstrap, "http_kafka")
    if unreachable is None:
        results.update(asyncio.run(_kafka_rates(bootstrap, bodies, events, args)))
    else:
        notes.append(unreachable)

    print(f"{'measure':28} {'messages/s':>11} {'µs/message':>11}")
    for name, rate in results.items():
        print(f"{name:28} {rate:>11,} {1e6 / rate:>11.1f}")
    ratios: dict[str, float] = {}
    for name in SAMPLES:
        ratios[f"{name}: parse_map/json_loads"] = (
            results[f"{name}.parse_map"] / results[f"{name}.json_loads"]
        )
        ratios[f"{name}: http/parse_map"] = results[f"{name}.http"] / results[f"{name}.parse_map"]
        if f"{name}.http_kafka" in results:
            ratios[f"{name}: http_kafka/parse_map"] = (
                results[f"{name}.http_kafka"] / results[f"{name}.parse_map"]
            )
    for name, ratio in ratios.items():
        print(f"{name:42} {ratio:6.3f}")

    record: dict[str, object] = {
        "bench": "gateway_fhir",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "messages": args.messages,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "events_per_message": events,
        "messages_per_s": results,
        "ratios": {name: round(ratio, 4) for name, ratio in ratios.items()},
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
