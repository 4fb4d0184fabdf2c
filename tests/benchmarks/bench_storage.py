"""Benchmark: what a stream costs in Kafka bytes and ClickHouse storage (docs/deploy.md).

Run ``python -m tests.benchmarks.bench_storage`` from the repository root with the
ClickHouse server up (``make up``; ``IMGOV_CLICKHOUSE_*`` say where). Sizing a
deployment needs per-study factors that no other benchmark measures; this one takes a
simulated stream (default: the demo's clinic, 3 sites x 60 studies a day x 90 days,
seed 7) and measures:

* **input**: studies, events by type, events per study, and the Kafka bytes of each
  event as ``imgov simulate --bootstrap`` produces it (key + Confluent-framed Avro);
* **output**: the replay through the governance core (the driver of ``imgov replay``,
  one process) into a fresh database on the ClickHouse server, ``event_log`` included,
  with current KPI values every ``--current-interval-s`` of event time, as a live
  worker at real-time pace emits them every ``IMGOV_WORKER_CURRENT_INTERVAL_S`` (10 s)
  of processing time (default 0: final values only, as ``imgov replay``, about 30 s;
  10 takes minutes: every KPI row a live worker inserts); every output is also
  encoded as the worker produces it, for the Kafka bytes per output topic;
* **audit checkpoint**: one checkpoint of the chain heads held at the end, written as
  the worker writes one every ``IMGOV_WORKER_AUDIT_CHECKPOINT_INTERVAL_S`` (60 s);
* **state**: the KPI snapshot of the aggregator at 90% of the input (what a KPI
  partition writes at each checkpoint, here for every algorithm together), the lineage
  state of the studies held at the end (bytes per study, decode time: the audit
  checkpoint decodes every held study);
* **storage**: ``system.parts`` of every table (rows, compressed and uncompressed data,
  bytes on disk) after the run and again after ``OPTIMIZE TABLE ... FINAL``, and the
  largest columns of each table; then the database is dropped.

It prints the tables and appends one JSON line to ``.imgov/bench/results.jsonl``; the
factors per study are what ``docs/deploy.md``'s sizing table multiplies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from schemas.codec import Codec  # noqa: E402
from schemas.events import Event  # noqa: E402
from schemas.records import (  # noqa: E402
    Breach,
    DeadLetter,
    KpiValue,
    LineageRecord,
    ReviewCandidate,
)
from schemas.registry import registry_from_environ  # noqa: E402
from schemas.validation import EventValidator  # noqa: E402
from sinks.base import Output, Sink  # noqa: E402
from sinks.chdb import ChdbSink  # noqa: E402
from sinks.clickhouse.migrate import migrate  # noqa: E402
from sinks.clickhouse.settings import ClickHouseSettings  # noqa: E402
from sinks.clickhouse.writer import ClickHouseSink  # noqa: E402
from sinks.query import ClickHouseBackend, QueryBackend  # noqa: E402
from streams.core.kpi.snapshot import encode_snapshot, snapshot_document  # noqa: E402
from streams.core.lineage.codec import decode_state, encode_state  # noqa: E402
from streams.core.pipeline import GovernanceProcessor  # noqa: E402
from streams.core.watermarks import WatermarkTracker  # noqa: E402
from streams.governance import (  # noqa: E402
    DEMO_SETTINGS,
    build_breach_evaluator,
    build_pseudonymiser,
    checkpoint_keyring,
    lineage_config,
    load_settings,
    tune_garbage_collector,
    wall_clock_ms,
)
from streams.replay.anchor import write_replay_checkpoint  # noqa: E402
from streams.replay.driver import replay  # noqa: E402
from streams.runtime.outputs import OutgoingMessage, OutputEncoder  # noqa: E402
from streams.simulate.config import SimulationConfig  # noqa: E402
from streams.simulate.output import write_events  # noqa: E402
from streams.simulate.run import run_simulation  # noqa: E402
from streams.topics import WorkerTopics  # noqa: E402

FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01: every simulated timestamp is "past"


def _message_bytes(messages: list[OutgoingMessage]) -> int:
    """Key + value + header bytes: what a message adds to a topic before batching."""
    return sum(
        len(m.key or b"") + len(m.value) + sum(len(k) + len(v or b"") for k, v in m.headers)
        for m in messages
    )


_TABLE_OF: dict[type, str] = {
    LineageRecord: "lineage_history",
    KpiValue: "kpi_values",
    Breach: "kpi_breaches",
    ReviewCandidate: "review_candidates",
    DeadLetter: "rejected_events",
}


class _MeasuringSink:
    """Passes every output to the audit sink; counts its rows and its Kafka messages."""

    def __init__(self, sink: Sink, encoder: OutputEncoder) -> None:
        self._sink = sink
        self._encoder = encoder
        self.rows: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def _count(self, topic: str, messages: list[OutgoingMessage]) -> None:
        self.messages[topic] += len(messages)
        self.bytes[topic] += _message_bytes(messages)

    def add(self, record: Output) -> None:
        self._sink.add(record)
        self.rows[_TABLE_OF.get(type(record), "event_log")] += 1
        encoder = self._encoder
        if isinstance(record, LineageRecord):
            self._count("lineage", encoder.lineage([record]))
            self._count("contributions", encoder.contributions([record]))
        elif isinstance(record, KpiValue):
            self._count("kpi", encoder.kpis([record]))
        elif isinstance(record, Breach):
            self._count("breach", encoder.breaches([record]))
        elif isinstance(record, ReviewCandidate):
            self._count("review", encoder.reviews([record]))
        elif isinstance(record, DeadLetter):
            self._count("dlq", encoder.dead_letters([record]))

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        self._sink.close()


def _parts(backend: QueryBackend, database: str) -> dict[str, dict[str, int]]:
    _, rows = backend.execute(
        "SELECT table, count(), sum(rows), sum(data_compressed_bytes),"
        " sum(data_uncompressed_bytes), sum(bytes_on_disk) FROM system.parts"
        " WHERE database = %(db)s AND active GROUP BY table ORDER BY table",
        {"db": database},
    )
    return {
        str(table): {
            "parts": int(parts),
            "rows": int(count),
            "compressed_bytes": int(compressed),
            "uncompressed_bytes": int(uncompressed),
            "bytes_on_disk": int(on_disk),
        }
        for table, parts, count, compressed, uncompressed, on_disk in rows
    }


def _largest_columns(
    backend: QueryBackend, database: str, per_table: int = 3
) -> dict[str, list[tuple[str, int, int]]]:
    _, rows = backend.execute(
        "SELECT table, name, data_compressed_bytes, data_uncompressed_bytes"
        " FROM system.columns WHERE database = %(db)s AND data_compressed_bytes > 0"
        " ORDER BY table, data_compressed_bytes DESC",
        {"db": database},
    )
    columns: dict[str, list[tuple[str, int, int]]] = {}
    for table, name, compressed, uncompressed in rows:
        listed = columns.setdefault(str(table), [])
        if len(listed) < per_table:
            listed.append((str(name), int(compressed), int(uncompressed)))
    return columns


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--studies-per-day", type=float, default=60.0)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--current-interval-s",
        type=float,
        default=0.0,
        help="current KPI values every N s of event time, as a live worker (10); 0: final"
        " values only (fast; storage after merges is the same)",
    )
    parser.add_argument(
        "--chdb", action="store_true", help="a scratch chDB directory instead of the server"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)
    tune_garbage_collector()

    # 1. The stream, and what its events weigh on the input topics.
    config = SimulationConfig(
        seed=args.seed, days=args.days, sites=args.sites, studies_per_day=args.studies_per_day
    )
    run = run_simulation(config)
    events: list[Event] = [d.event for d in run.deliveries]
    studies = len(run.truths)
    by_type = Counter(str(e.event_type) for e in events)
    codec = Codec(registry_from_environ(os.environ))
    input_bytes = sum(len(e.study_uid.encode()) + len(codec.encode(e)) for e in events)

    # 2. The replay, live-like, into a scratch database (server or chDB).
    settings = load_settings(DEMO_SETTINGS, demo=True)
    interval = round(args.current_interval_s * 1000) or None
    settings = settings.model_copy(
        update={"kpi": settings.kpi.model_copy(update={"emit_interval_ms": interval})}
    )
    breaches = build_breach_evaluator(settings)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, breaches)
    clean_event = build_pseudonymiser(settings).pseudonymise_event
    scratch = Path(tempfile.mkdtemp(prefix="imgov-bench-storage-"))
    sink: ClickHouseSink | ChdbSink
    if args.chdb:
        database = "imgov"
        sink = ChdbSink(scratch / "chdb", clean_event=clean_event, background=True)
        backend: QueryBackend = sink.backend
    else:
        database = f"imgov_bench_storage_{uuid.uuid4().hex[:8]}"
        server = ClickHouseBackend.connect(
            ClickHouseSettings(), database=database, create_database=True
        )
        migrate(server)
        backend = server
        sink = ClickHouseSink(server, clean_event=clean_event)
    snapshot: dict[str, float] = {}
    try:
        version = str(backend.execute("SELECT version()")[1][0][0])
        measuring = _MeasuringSink(sink, OutputEncoder(codec, WorkerTopics.with_namespace()))
        done = [0]

        def on_progress(count: int) -> None:
            # The KPI state near the end of a long input: what a checkpoint writes.
            done[0] += count
            if not snapshot and done[0] >= 0.9 * len(events):
                upstream = WatermarkTracker(0, range(3))
                began = time.perf_counter()
                data = encode_snapshot(
                    snapshot_document(processor.aggregator, breaches, upstream, [(0, done[0])], ())
                )
                snapshot["bytes"] = len(data)
                snapshot["encode_ms"] = (time.perf_counter() - began) * 1e3

        path = scratch / "stream.jsonl"
        write_events(path, events)
        began = time.perf_counter()
        stats = replay(
            [path],
            processor,
            measuring,
            EventValidator(lambda: FAR_FUTURE_MS),
            record_events=True,
            on_progress=on_progress,
            collect_heads=True,
        )
        replay_s = time.perf_counter() - began
        measuring.flush()

        # 3. One audit checkpoint of the heads held at the end.
        write_replay_checkpoint(stats, backend, checkpoint_keyring(settings), wall_clock_ms())

        # 4. Lineage state of the studies held at the end.
        encoded = [encode_state(state) for _, state in processor.joiner.store.items()]
        began = time.perf_counter()
        for data in encoded:
            decode_state(data)
        decode_us = (time.perf_counter() - began) * 1e6 / max(1, len(encoded))

        # 5. Storage, as inserted and after the merges ReplacingMergeTree will do anyway.
        before = _parts(backend, database)
        for table in before:
            backend.execute(f"OPTIMIZE TABLE {table} FINAL")
        after = _parts(backend, database)
        columns = _largest_columns(backend, database)
    finally:
        if args.chdb:
            sink.close()
        else:
            if not args.keep:
                backend.execute(f"DROP DATABASE IF EXISTS {database}")
            backend.close()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    result: dict[str, object] = {
        "bench": "storage",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "clickhouse": ("chDB " if args.chdb else "server ") + version,
        "sites": args.sites,
        "studies_per_site_and_day": args.studies_per_day,
        "days": args.days,
        "seed": args.seed,
        "current_interval_s": args.current_interval_s,
        "studies": studies,
        "events": len(events),
        "events_by_type": dict(by_type),
        "events_per_study": round(len(events) / studies, 3),
        "input_kafka_bytes": input_bytes,
        "input_kafka_bytes_per_event": round(input_bytes / len(events), 1),
        "output_messages": dict(measuring.messages),
        "output_kafka_bytes": dict(measuring.bytes),
        "replay_s": round(replay_s, 1),
        "rows_inserted": dict(measuring.rows),
        "heads_held_at_end": len(stats.heads or ()),
        "studies_held_at_end": len(encoded),
        "lineage_state_bytes_mean": round(sum(map(len, encoded)) / max(1, len(encoded)), 1),
        "lineage_state_decode_us": round(decode_us, 1),
        "kpi_snapshot_bytes": int(snapshot.get("bytes", 0)),
        "kpi_snapshot_encode_ms": round(snapshot.get("encode_ms", 0.0), 1),
        "parts_before_optimize": before,
        "parts_after_optimize": after,
        "largest_columns": columns,
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(result, separators=(",", ":")) + "\n")
    return result


def _print(result: dict[str, object]) -> None:
    studies = int(result["studies"])  # type: ignore[call-overload]
    print(
        f"{result['sites']} sites x {result['studies_per_site_and_day']} studies/day x"
        f" {result['days']} days: {studies:,} studies, {result['events']:,} events"
        f" ({result['events_per_study']} per study), replay {result['replay_s']} s"
    )
    print(f"events by type: {result['events_by_type']}")
    print(
        f"input on Kafka: {result['input_kafka_bytes_per_event']} bytes/event"
        " (key + Confluent-framed Avro value)"
    )
    messages: dict[str, int] = result["output_messages"]  # type: ignore[assignment]
    sizes: dict[str, int] = result["output_kafka_bytes"]  # type: ignore[assignment]
    print(f"\n{'output topic':<16}{'messages':>12}{'per study':>11}{'bytes/msg':>11}")
    for topic, count in sorted(messages.items()):
        print(f"{topic:<16}{count:>12,}{count / studies:>11.2f}{sizes[topic] / count:>11.0f}")
    before: dict[str, dict[str, int]] = result["parts_before_optimize"]  # type: ignore[assignment]
    after: dict[str, dict[str, int]] = result["parts_after_optimize"]  # type: ignore[assignment]
    inserted: dict[str, int] = result["rows_inserted"]  # type: ignore[assignment]
    print(
        f"\n{'table':<24}{'inserted':>11}{'parts':>7}{'rows final':>12}{'per study':>11}"
        f"{'compr. B':>12}{'uncompr. B':>13}{'ratio':>7}{'B/row':>7}{'disk B/row':>11}"
    )
    for table, final in after.items():
        rows = final["rows"] or 1
        print(
            f"{table:<24}{inserted.get(table, before[table]['rows']):>11,}"
            f"{before[table]['parts']:>7}{final['rows']:>12,}{final['rows'] / studies:>11.3f}"
            f"{final['compressed_bytes']:>12,}{final['uncompressed_bytes']:>13,}"
            f"{final['uncompressed_bytes'] / max(1, final['compressed_bytes']):>7.1f}"
            f"{final['compressed_bytes'] / rows:>7.1f}{final['bytes_on_disk'] / rows:>11.1f}"
        )
    print(
        f"\nheads held at the end: {result['heads_held_at_end']:,}"
        f" ({result['studies_held_at_end']:,} studies, lineage state"
        f" {result['lineage_state_bytes_mean']} B each, decoded in"
        f" {result['lineage_state_decode_us']} us)"
    )
    print(
        f"KPI snapshot at 90% of the input: {result['kpi_snapshot_bytes']:,} bytes"
        f" (encoded in {result['kpi_snapshot_encode_ms']} ms)"
    )


if __name__ == "__main__":
    main()
