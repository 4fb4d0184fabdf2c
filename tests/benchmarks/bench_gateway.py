"""Benchmark: HL7 v2 messages/s through the gateway, beside its parse ceiling (DESIGN §10).

Run ``python -m tests.benchmarks.bench_gateway`` from the repository root. Messages are
the hand-written ORU^R01 samples of ``tests/data/hl7/good`` (one or two reports each,
repeating OBX, escaped delimiters), each copy with its own control id and study UID.
Measured in one run:

* ``parse_ceiling``: ``parse_message`` + ``report_events`` + contract rules + Avro
  encoding of every event, in one process with no I/O: what the gateway's own work
  allows per core;
* ``mllp_memory``: through the MLLP listener on 127.0.0.1 to the in-memory delivery
  (which still encodes), sent by ``--connections`` python-hl7 ``mllp_send`` processes,
  each waiting for every ACK before the next message, as MLLP senders do;
* ``mllp_kafka``: the same, to the real broker (``IMGOV_KAFKA_BOOTSTRAP``, default
  127.0.0.1:19092) on fresh topics, each ACK sent only once Kafka (acks=all)
  acknowledged the events. Skipped with a message when the broker is unreachable
  (unless ``CI=true``).

Prints a table and appends one JSON line to ``.imgov/bench/results.jsonl``. The machine
is shared and noisy: compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from schemas.codec import Codec  # noqa: E402
from schemas.registry import registry_from_environ  # noqa: E402
from schemas.validation import EventValidator  # noqa: E402
from streams.gateway.delivery import Delivery, KafkaDelivery, MemoryDelivery  # noqa: E402
from streams.gateway.hl7 import load_hl7_mapping, parse_message, report_events  # noqa: E402
from streams.gateway.mllp import END_BLOCK, START_BLOCK, MllpListener  # noqa: E402
from tests.benchmarks.gateway_kafka import (  # noqa: E402
    kafka_bootstrap,
    kafka_unreachable,
    throwaway_topics,
)

GOOD = sorted((ROOT / "tests" / "data" / "hl7" / "good").iterdir())
MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")
NOW_MS = 1_768_000_000_000


def messages(count: int) -> list[bytes]:
    """``count`` messages cycling through the samples, each with its own MSH-10 and study."""
    templates = [p.read_bytes().replace(b"\n", b"\r") for p in GOOD]
    out = []
    for n in range(count):
        segments = templates[n % len(templates)].split(b"\r")
        msh = segments[0].split(b"|")
        msh[9] = f"BENCH-{n:08d}".encode()
        segments[0] = b"|".join(msh)
        text = b"\r".join(segments)
        out.append(text.replace(b"1.2.826.0.1.3680043.10.2.", f"1.2.826.0.1.{n}.".encode()))
    return out


def parse_ceiling(data: list[bytes], codec: Codec, repeat: int) -> tuple[float, int]:
    """Best messages/s of parse + map + rules + encode; and the events per pass."""
    mapping = load_hl7_mapping()
    validator = EventValidator(lambda: NOW_MS)
    encode = codec.encode
    best = float("inf")
    events = 0
    for _ in range(repeat):
        gc.collect()
        began = time.perf_counter()
        events = 0
        for message in data:
            for event in report_events(parse_message(message), mapping):
                encode(validator.validate(event))
                events += 1
        best = min(best, time.perf_counter() - began)
    return len(data) / best, events


async def through_mllp(delivery: Delivery, data: list[bytes], connections: int, tmp: Path) -> float:
    """Messages/s from the first frame sent to the last ACK received, over MLLP."""
    listener = MllpListener(delivery, load_hl7_mapping(), validator=EventValidator(lambda: NOW_MS))
    await listener.start("127.0.0.1", 0)
    files = []
    for c in range(connections):
        path = tmp / f"mllp-{c}.in"
        path.write_bytes(b"".join(START_BLOCK + m + END_BLOCK for m in data[c::connections]))
        files.append(path)
    try:
        began = time.perf_counter()
        senders = [await _mllp_send(listener.port, path) for path in files]
        outputs = await asyncio.gather(*(s.communicate() for s in senders))
        elapsed = time.perf_counter() - began
    finally:
        await listener.stop(30)
    accepted = sum(out.count(b"\rMSA|AA|") for out, _ in outputs)
    if accepted != len(data):
        raise SystemExit(f"only {accepted} of {len(data)} messages were answered AA")
    return len(data) / elapsed


async def _mllp_send(port: int, path: Path) -> asyncio.subprocess.Process:
    command = [MLLP_SEND, "--port", str(port), "--file", str(path), "127.0.0.1"]
    return await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)


async def to_kafka(
    bootstrap: str, codec: Codec, data: list[bytes], connections: int, tmp: Path
) -> float:
    """Messages/s over MLLP into ``KafkaDelivery`` on throwaway topics (then deleted)."""
    with throwaway_topics(bootstrap, "bench-gw-") as topics:
        delivery = await KafkaDelivery.connect(bootstrap, codec, topics)
        try:
            return await through_mllp(delivery, data, connections, tmp)
        finally:
            await delivery.close()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5_000, help="messages per measure")
    parser.add_argument("--connections", type=int, default=4, help="concurrent MLLP senders")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the ceiling (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    import tempfile

    codec = Codec(registry_from_environ(os.environ))
    data = messages(args.messages)
    ceiling, events = parse_ceiling(data, codec, args.repeat)
    rates: dict[str, Any] = {"parse_ceiling": round(ceiling)}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryDelivery(encode=codec.encode)
        rates["mllp_memory"] = round(
            asyncio.run(through_mllp(memory, data, args.connections, Path(tmp)))
        )
        bootstrap = kafka_bootstrap()
        unreachable = kafka_unreachable(bootstrap, "mllp_kafka")
        if unreachable is None:
            rates["mllp_kafka"] = round(
                asyncio.run(to_kafka(bootstrap, codec, data, args.connections, Path(tmp)))
            )
        else:
            notes.append(unreachable)

    print(f"{'measure':16} {'messages/s':>11} {'µs/message':>11}")
    for name, rate in rates.items():
        print(f"{name:16} {rate:>11,} {1e6 / rate:>11.1f}")
    ratios = {
        f"{name}/parse_ceiling": round(rates[name] / rates["parse_ceiling"], 3)
        for name in ("mllp_memory", "mllp_kafka")
        if name in rates
    }
    for name, ratio in ratios.items():
        print(f"{name:30} {ratio:6.3f}")

    record: dict[str, object] = {
        "bench": "gateway",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "messages": len(data),
        "events_per_message": round(events / len(data), 3),
        "connections": args.connections,
        "messages_per_s": rates,
        "ratios": ratios,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
