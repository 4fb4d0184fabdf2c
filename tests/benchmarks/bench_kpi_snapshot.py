"""Benchmark: the KPI snapshot codec (format 1) on a large partition state.

Run ``python -m tests.benchmarks.bench_kpi_snapshot`` from the repository root. It
simulates ``--days`` (90) of ``--sites`` (1) sites and their two algorithms through the
core pipeline (the state a KPI partition of one service holds after that long: panes,
emitted windows, PSI references, breach series; with more sites, the state of every
site's series, as one algorithm's KPI partition holds them), then measures, best of
``--repeat``:

* ``encode``: ``snapshot_document`` + ``encode_snapshot`` (what each checkpoint costs);
* ``decode_load``: ``decode_snapshot`` + ``load_snapshot`` (what a new owner pays);
* for comparison, the size of a pickle of the same objects (what the previous release
  wrote; pickled here only to measure it: nothing reads it back).

It prints a table and appends one JSON line to ``.imgov/bench/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from streams.core.kpi.aggregator import KpiAggregator  # noqa: E402
from streams.core.kpi.snapshot import (  # noqa: E402
    decode_snapshot,
    encode_snapshot,
    load_snapshot,
    snapshot_document,
)
from streams.core.pipeline import GovernanceProcessor  # noqa: E402
from streams.core.watermarks import WatermarkTracker  # noqa: E402
from streams.governance import build_breach_evaluator, lineage_config, load_settings  # noqa: E402
from streams.simulate.config import SimulationConfig  # noqa: E402
from streams.simulate.run import run_simulation  # noqa: E402


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--studies-per-day", type=float, default=40.0)
    parser.add_argument("--sites", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    settings = load_settings(demo=True)
    simulation = SimulationConfig(
        seed=7, days=args.days, sites=args.sites, studies_per_day=args.studies_per_day
    )
    events = [d.event for d in run_simulation(simulation).deliveries]
    breaches = build_breach_evaluator(settings)
    processor = GovernanceProcessor(lineage_config(settings), settings.kpi, breaches)
    for i in range(0, len(events), 5_000):
        processor.process(events[i : i + 5_000])
    aggregator = processor.aggregator
    upstream = WatermarkTracker(0, range(3))
    applied = [(0, len(events))]

    def document() -> dict[str, object]:
        return snapshot_document(aggregator, breaches, upstream, applied, ())

    data = encode_snapshot(document())
    encode_s = _best(lambda: encode_snapshot(document()), args.repeat)
    decode_s = _best(
        lambda: load_snapshot(
            decode_snapshot(data),
            lambda: KpiAggregator(settings.kpi, current_on_demand=True),
            lambda: build_breach_evaluator(settings),
        ),
        args.repeat,
    )
    pickled = len(pickle.dumps((aggregator, breaches, upstream), protocol=pickle.HIGHEST_PROTOCOL))
    size = aggregator.state_size()
    print(f"state after {args.days} days, {len(events):,} events: {size}")
    print(f"{'format 1 snapshot':24} {len(data):>12,} bytes")
    print(f"{'pickle (previous)':24} {pickled:>12,} bytes")
    print(f"{'encode':24} {encode_s * 1e3:>12.1f} ms")
    print(f"{'decode + load':24} {decode_s * 1e3:>12.1f} ms")

    record: dict[str, object] = {
        "bench": "kpi_snapshot",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "days": args.days,
        "sites": args.sites,
        "events": len(events),
        "state": size,
        "snapshot_bytes": len(data),
        "pickle_bytes": pickled,
        "encode_ms": round(encode_s * 1e3, 1),
        "decode_load_ms": round(decode_s * 1e3, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
