"""Benchmark: rows/s of the audit-table sinks for lineage records (DESIGN §10).

Run ``python -m tests.benchmarks.bench_sinks`` (or ``python tests/benchmarks/bench_sinks.py``)
from the repository root. It builds ``--rows`` chained lineage revisions, then measures
in one process:

* ``row_map``: ``lineage_row`` alone (the pure mapping; the ceiling of any sink);
* ``chdb_inline``: ``ChdbSink(background=False)``: add every record, flush;
* ``chdb_background``: the same with the insert on the sink's background thread;
* ``chdb_events``: input events into ``event_log`` (identifiers removed, JSON payload);
* ``server``: ``ClickHouseSink`` into a scratch database on the ClickHouse server
  (skipped when the server does not answer);
* ``producer_alone`` / ``producer_chdb`` / ``producer_chdb_bg``: a synthetic producer
  that burns about ``--work-us`` of Python CPU per record (standing in for the pipeline
  core at ~100k events/s), alone and feeding ``ChdbSink`` (inline / background insert):
  the ratio is the throughput the chDB sink leaves to the pipeline (DESIGN §10 asks
  for >= 0.8 of replay).

Measures run round-robin ``--repeat`` times and the fastest run of each is kept. It
prints a table and appends one JSON line to ``.imgov/bench/results.jsonl``. Figures on a
shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from schemas.corpus import sample_events  # noqa: E402
from schemas.records import LineageRecord  # noqa: E402
from sinks.chdb import ChdbSink  # noqa: E402
from sinks.clickhouse.migrate import migrate  # noqa: E402
from sinks.clickhouse.rows import lineage_row  # noqa: E402
from sinks.clickhouse.settings import ClickHouseSettings  # noqa: E402
from sinks.clickhouse.writer import ClickHouseSink  # noqa: E402
from sinks.query import ClickHouseBackend, QueryError  # noqa: E402
from tests.unit.sinks.factory import lineage_records  # noqa: E402


def _burner(work_us: float) -> Callable[[], None]:
    """Returns a function that spends about ``work_us`` of pure-Python CPU (holds the GIL)."""
    loops = 1000
    for _ in range(3):  # refine: one short calibration is easily thrown off on a shared box
        timings = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(2000):
                sum(range(loops))
            timings.append((time.perf_counter() - began) / 2000)
        loops = max(1, round(loops * work_us * 1e-6 / sorted(timings)[2]))

    def burn() -> None:
        sum(range(loops))

    return burn


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="lineage rows per run")
    parser.add_argument("--events", type=int, default=30_000, help="input events per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure (best kept)")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="ChdbSink batch size")
    parser.add_argument("--server-batch-rows", type=int, default=20_000)
    parser.add_argument("--work-us", type=float, default=10.0, help="synthetic producer cost")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    records: list[LineageRecord] = lineage_records(args.rows)
    events = sample_events(args.events, seed=1, end_ms=1_760_000_000_000)
    scratch = Path(tempfile.mkdtemp(prefix="imgov-bench-sinks-"))
    burn = _burner(args.work_us)

    def row_map() -> None:
        for record in records:
            lineage_row(record)

    def chdb(background: bool, items: list, add_event: bool = False) -> Callable[[], None]:  # type: ignore[type-arg]
        def run() -> None:
            with ChdbSink(
                scratch / "chdb", batch_rows=args.batch_rows, background=background
            ) as sink:
                began = time.perf_counter()
                add = sink.add
                for item in items:
                    add(item)
                sink.flush()
                _timed[0] = time.perf_counter() - began

        return run

    def producer_alone() -> None:
        for _ in records:
            burn()

    def producer(background: bool) -> Callable[[], None]:
        def run() -> None:
            with ChdbSink(
                scratch / "chdb", batch_rows=args.batch_rows, background=background
            ) as sink:
                began = time.perf_counter()
                add = sink.add
                for record in records:
                    burn()
                    add(record)
                sink.flush()
                _timed[0] = time.perf_counter() - began

        return run

    settings = ClickHouseSettings()
    server_db = f"imgov_bench_{uuid.uuid4().hex[:8]}"
    server: ClickHouseBackend | None = None
    try:
        server = ClickHouseBackend.connect(settings, database=server_db, create_database=True)
        migrate(server)
    except QueryError as exc:
        print(f"server measure skipped: {exc}", file=sys.stderr)
        server = None

    def server_sink() -> None:
        assert server is not None
        sink = ClickHouseSink(
            server,
            max_batch_rows=args.server_batch_rows,
            max_buffer_rows=10 * args.server_batch_rows,
        )
        began = time.perf_counter()
        add = sink.add
        for record in records:
            add(record)
        sink.flush()
        _timed[0] = time.perf_counter() - began

    # Sinks time themselves (opening a chDB directory and migrating are not measured).
    _timed = [0.0]
    measures: list[tuple[str, int, Callable[[], None], bool]] = [
        ("row_map", len(records), row_map, False),
        ("chdb_inline", len(records), chdb(False, records), True),
        ("chdb_background", len(records), chdb(True, records), True),
        ("chdb_events", len(events), chdb(False, events), True),
        ("producer_alone", len(records), producer_alone, False),
        ("producer_chdb", len(records), producer(False), True),
        ("producer_chdb_bg", len(records), producer(True), True),
    ]
    if server is not None:
        measures.append(("server", len(records), server_sink, True))

    best = {name: float("inf") for name, _, _, _ in measures}
    try:
        for _ in range(args.repeat):
            for name, _, run, self_timed in measures:
                gc.collect()
                began = time.perf_counter()
                run()
                elapsed = _timed[0] if self_timed else time.perf_counter() - began
                best[name] = min(best[name], elapsed)
    finally:
        if server is not None:
            server.execute(f"DROP DATABASE IF EXISTS {server_db}")
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    rates = {name: round(count / best[name]) for name, count, _, _ in measures}
    per_row_us = {name: round(1e6 / rate, 2) for name, rate in rates.items()}
    ratios = {
        "producer_chdb/producer_alone": round(rates["producer_chdb"] / rates["producer_alone"], 3),
        "producer_chdb_bg/producer_alone": round(
            rates["producer_chdb_bg"] / rates["producer_alone"], 3
        ),
        "chdb_background/chdb_inline": round(rates["chdb_background"] / rates["chdb_inline"], 3),
    }
    result: dict[str, object] = {
        "bench": "sinks",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "rows": len(records),
        "events": len(events),
        "batch_rows": args.batch_rows,
        "server_batch_rows": args.server_batch_rows,
        "work_us": args.work_us,
        "producer_us_measured": per_row_us["producer_alone"],
        "rows_per_s": rates,
        "us_per_row": per_row_us,
        "ratios": ratios,
    }
    print(f"{'measure':<18}{'rows/s':>12}{'us/row':>10}")
    for name, rate in rates.items():
        print(f"{name:<18}{rate:>12,}{per_row_us[name]:>10}")
    for name, ratio in ratios.items():
        print(f"{name:<34}{ratio:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(result, separators=(",", ":")) + "\n")
    return result


if __name__ == "__main__":
    main()
