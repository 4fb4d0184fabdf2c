"""Benchmark: events/s of the lineage join against its ceiling, parse + validate (DESIGN §10).

Run ``python -m tests.benchmarks.bench_lineage`` (or ``python tests/benchmarks/bench_lineage.py``)
from the repository root. It simulates a clinic with ``streams.simulate`` (default 30
days x 3 sites x 100 studies a day, seed 1), writes its deliveries as JSON Lines to a
temporary file, then measures in one process (one core):

* ``parse_validate``: ``read_jsonl`` of the file with an ``EventValidator`` (the ceiling:
  replay cannot be faster than reading its input);
* ``join_chunked``: a fresh ``LineageJoiner`` fed the events of the file, parsed
  beforehand, with ``apply_many`` in chunks of ``--chunk`` events (what the replay
  driver does);
* ``replay``: ``read_jsonl`` and ``apply_many`` in chunks, streamed: file -> join, the
  lineage part of DESIGN §10's replay (no KPI aggregator, no sink);
* ``join_advance``: the same, moving the watermark to the greatest event time seen
  after each chunk (``advance``), as the pipeline does;
* ``join_single``: ``apply`` one event at a time (the worst case: a batch of one);
* ``join_encoded``: chunks again, with the state in a ``MappingStudyStore`` over a dict
  (encode and decode on every touch, as with a Faust/RocksDB table).

DESIGN §10 asks replay (file -> core, no sink) for >= 0.5 x parse_validate; the join
alone is the larger part of the core. It also reports the encoded state size per open study
(``encode_state``; DESIGN §10: <= 1 KB). Measures run round-robin ``--repeat`` times
and the fastest run of each is kept. It prints a table and appends one JSON line to
``.imgov/bench/results.jsonl``. Figures on a shared machine are noisy: compare ratios
measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

from schemas.events import Event, EventType  # noqa: E402
from schemas.files import RejectedInput, read_jsonl, write_jsonl  # noqa: E402
from schemas.validation import EventValidator  # noqa: E402
from streams.core.lineage.codec import encode_state  # noqa: E402
from streams.core.lineage.config import AlgorithmEligibility, LineageConfig  # noqa: E402
from streams.core.lineage.join import LineageJoiner  # noqa: E402
from streams.core.lineage.store import InMemoryStudyStore, MappingStudyStore  # noqa: E402
from streams.simulate.config import SimulationConfig  # noqa: E402
from streams.simulate.run import run_simulation  # noqa: E402
from tests.benchmarks.rates import Measure, best_rates  # noqa: E402

FAR_FUTURE_MS = 4_102_444_800_000
"""2100-01-01: the validator's fixed clock, so no simulated event is 'in the future'."""


def lineage_config(simulation: SimulationConfig) -> LineageConfig:
    """Returns a join configuration whose eligibility matches the simulated algorithms."""
    eligibility = tuple(
        AlgorithmEligibility(
            algorithm_name=a.name,
            finding_code=a.finding_code,
            modality=a.modality,
            body_parts=(a.body_part,),
        )
        for a in simulation.algorithms
    )
    return LineageConfig(demo=True, eligibility=eligibility)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--studies-per-day", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=2000, help="events per apply_many")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure (best kept)")
    parser.add_argument("--no-single", action="store_true", help="skip the slow join_single")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    simulation = SimulationConfig(
        seed=args.seed, days=args.days, sites=args.sites, studies_per_day=args.studies_per_day
    )
    simulated = [d.event for d in run_simulation(simulation).deliveries]
    config = lineage_config(simulation)
    validator = EventValidator(lambda: FAR_FUTURE_MS)
    chunk = args.chunk

    with tempfile.TemporaryDirectory(prefix="imgov-bench-lineage-") as tmp:
        path = Path(tmp) / "events.jsonl"
        write_jsonl(path, simulated)
        del simulated
        file_bytes = path.stat().st_size
        # The join's input is the file parsed up front: events laid out in memory in file
        # order, as a replay's chunk would be. They are then frozen out of the cyclic
        # collector's sight: a replay streams its input, so its full collections never
        # walk a whole file of events, and a benchmark whose did would measure that.
        events: list[Event] = []
        for result in read_jsonl(path, validator=validator):
            assert not isinstance(result, RejectedInput)
            events.append(result)
        chunks = [events[i : i + chunk] for i in range(0, len(events), chunk)]
        gc.collect()
        gc.freeze()

        def parse_validate() -> None:
            for result in read_jsonl(path, validator=validator):
                assert not isinstance(result, RejectedInput)

        def replay() -> None:
            joiner = LineageJoiner(config)
            part: list[Event] = []
            for result in read_jsonl(path, validator=validator):
                assert not isinstance(result, RejectedInput)
                part.append(result)
                if len(part) == chunk:
                    joiner.apply_many(part)
                    part = []
            joiner.apply_many(part)

        def join_chunked() -> None:
            joiner = LineageJoiner(config)
            for part in chunks:
                joiner.apply_many(part)

        def join_advance() -> None:
            joiner = LineageJoiner(config)
            latest = 0
            for part in chunks:
                joiner.apply_many(part)
                latest = max(latest, max(e.occurred_at_ms for e in part))
                joiner.advance(latest)

        def join_single() -> None:
            joiner = LineageJoiner(config)
            for event in events:
                joiner.apply(event)

        def join_encoded() -> None:
            joiner = LineageJoiner(config, MappingStudyStore({}))
            for part in chunks:
                joiner.apply_many(part)

        measures: list[Measure] = [
            ("parse_validate", len(events), parse_validate),
            ("join_chunked", len(events), join_chunked),
            ("replay", len(events), replay),
            ("join_advance", len(events), join_advance),
            ("join_encoded", len(events), join_encoded),
        ]
        if not args.no_single:
            measures.append(("join_single", len(events), join_single))
        parse_validate()  # warm caches (file system, validator plans)
        results = best_rates(measures, args.repeat)
        gc.unfreeze()

    # State size: every study left open at the end of the run, encoded.
    store = InMemoryStudyStore()
    joiner = LineageJoiner(config, store)
    revisions = 0
    for part in chunks:
        revisions += len(joiner.apply_many(part).revisions)
    sizes = [len(encode_state(state)) for _, state in store.items() if not state.is_tombstone]
    state_bytes = {
        "open_studies": len(sizes),
        "mean": round(statistics.fmean(sizes), 1),
        "p50": round(statistics.median(sizes)),
        "p99": round(statistics.quantiles(sizes, n=100)[98]),
        "max": max(sizes),
    }

    ceiling = results["parse_validate"]
    ratios = {f"{name}/parse_validate": rate / ceiling for name, rate in results.items()}
    ratios.pop("parse_validate/parse_validate")

    print(f"{len(events):,} events ({file_bytes / 1e6:.1f} MB JSON Lines), chunks of {chunk}")
    print(f"{'measure':16} {'events/s':>10} {'µs/event':>9} {'x parse':>8}")
    for name, rate in results.items():
        print(f"{name:16} {rate:>10,} {1e6 / rate:>9.1f} {rate / ceiling:>8.3f}")
    print(
        f"revisions per event (chunked): {revisions / len(events):.2f}; state bytes per open "
        f"study: mean {state_bytes['mean']}, p50 {state_bytes['p50']}, p99 "
        f"{state_bytes['p99']}, max {state_bytes['max']} ({state_bytes['open_studies']} studies)"
    )

    record: dict[str, object] = {
        "bench": "lineage",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "simulation": {
            "days": args.days,
            "sites": args.sites,
            "studies_per_day": args.studies_per_day,
            "seed": args.seed,
        },
        "events": len(events),
        "mix": {t.value: sum(e.event_type is t for e in events) for t in EventType},
        "chunk": chunk,
        "events_per_s": results,
        "ratios": {name: round(ratio, 3) for name, ratio in ratios.items()},
        "revisions_per_event": round(revisions / len(events), 3),
        "state_bytes_per_open_study": state_bytes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
