"""Benchmark: decode + validate throughput of the input codecs (DESIGN §10).

Run ``python -m tests.benchmarks.bench_codec`` (or ``python tests/benchmarks/bench_codec.py``)
from the repository root. It generates a realistic mix of the three event types, then
measures, in one process (one core):

* ``avro_raw``: fastavro ``schemaless_reader`` alone, no models (the ceiling of decoding);
* ``avro_decode_validate``: ``Codec.decode_event`` on Confluent-framed messages (framing,
  schema plan, Avro, pydantic model, value rules): the live path;
* ``avro_v1_writer``: the same for InferenceEvents written with schema v1 (evolution path);
* ``jsonl_parse_validate``: ``read_jsonl`` with value rules (the replay path from files);
* ``jsonl_loads_validate``: ``json.loads`` + ``model_validate`` per line, for comparison;
* ``avro_file_validate``: ``read_avro`` of a container file with value rules.

Measures run round-robin ``--repeat`` times and the fastest run of each is kept.
It prints a table and appends one JSON line to ``.imgov/bench/results.jsonl``. Figures on a
shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402

from schemas.codec import SUBJECTS_BY_MODEL, Codec, schema_for_reading  # noqa: E402
from schemas.corpus import sample_events  # noqa: E402
from schemas.events import EVENT_MODELS, Event, EventType, InferenceEvent  # noqa: E402
from schemas.file_registry import FileSchemaRegistry  # noqa: E402
from schemas.files import (  # noqa: E402
    RejectedInput,
    event_to_json_line,
    read_avro,
    read_jsonl,
    write_avro,
)
from schemas.subjects import load_avsc  # noqa: E402
from schemas.validation import EventValidator  # noqa: E402
from tests.benchmarks.rates import Measure, best_rates  # noqa: E402

END_MS = 1_760_000_000_000


def _v1_messages(codec: Codec, registry: FileSchemaRegistry, events: list[Event]) -> list[bytes]:
    v1 = registry.versions("imgov.events.v1.InferenceEvent")[0]
    parsed = schema_for_reading(v1.schema)
    prefix = b"\x00" + v1.schema_id.to_bytes(4, "big")
    messages = []
    for event in events:
        if isinstance(event, InferenceEvent):
            record = event.model_dump()
            del record["manufacturer"]
            buffer = io.BytesIO()
            buffer.write(prefix)
            fastavro.schemaless_writer(buffer, parsed, record)
            messages.append(buffer.getvalue())
    return messages


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measure (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    events = sample_events(args.events, seed=1, end_ms=END_MS)
    registry = FileSchemaRegistry()
    codec = Codec(registry, validator=EventValidator(lambda: END_MS))
    framed = [codec.encode(e) for e in events]
    v1 = _v1_messages(codec, registry, events)
    jsonl = b"".join(event_to_json_line(e) for e in events)
    container = io.BytesIO()
    write_avro(container, events)
    avro_file = container.getvalue()
    validator = EventValidator(lambda: END_MS)
    current = load_avsc()
    parsed = {
        codec.schema_id(model): schema_for_reading(current[SUBJECTS_BY_MODEL[model]])
        for model in EVENT_MODELS.values()
    }

    def avro_raw() -> None:
        for message in framed:
            stream = io.BytesIO(message)
            stream.seek(5)
            fastavro.schemaless_reader(stream, parsed[int.from_bytes(message[1:5], "big")], None)

    def avro_decode_validate() -> None:
        decode = codec.decode_event
        for message in framed:
            decode(message)

    def avro_v1_writer() -> None:
        decode = codec.decode_event
        for message in v1:
            decode(message)

    def jsonl_parse_validate() -> None:
        for result in read_jsonl(io.BytesIO(jsonl), validator=validator):
            assert not isinstance(result, RejectedInput)

    def jsonl_loads_validate() -> None:
        for line in jsonl.splitlines():
            data = json.loads(line)
            validator.validate(EVENT_MODELS[EventType(data.pop("event_type"))].model_validate(data))

    def avro_file_validate() -> None:
        for result in read_avro(io.BytesIO(avro_file), validator=validator):
            assert not isinstance(result, RejectedInput)

    measures: list[Measure] = [
        ("avro_raw", len(framed), avro_raw),
        ("avro_decode_validate", len(framed), avro_decode_validate),
        ("avro_v1_writer", len(v1), avro_v1_writer),
        ("jsonl_parse_validate", len(events), jsonl_parse_validate),
        ("jsonl_loads_validate", len(events), jsonl_loads_validate),
        ("avro_file_validate", len(events), avro_file_validate),
    ]
    avro_decode_validate()  # warm the read plans and caches
    results = best_rates(measures, args.repeat)

    print(f"{'measure':24} {'events/s':>10} {'µs/event':>9}")
    for name, rate in results.items():
        print(f"{name:24} {rate:>10,} {1e6 / rate:>9.1f}")
    ratios = {
        "avro_decode_validate/avro_raw": results["avro_decode_validate"] / results["avro_raw"],
        "jsonl_parse_validate/jsonl_loads_validate": (
            results["jsonl_parse_validate"] / results["jsonl_loads_validate"]
        ),
        "avro_file_validate/avro_decode_validate": (
            results["avro_file_validate"] / results["avro_decode_validate"]
        ),
    }
    for name, ratio in ratios.items():
        print(f"{name:42} {ratio:5.2f}")

    record: dict[str, object] = {
        "bench": "codec",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "events": len(events),
        "mix": {t.value: sum(e.event_type is t for e in events) for t in EventType},
        "events_per_s": results,
        "ratios": {name: round(ratio, 3) for name, ratio in ratios.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
