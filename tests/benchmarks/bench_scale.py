"""Benchmark: replaying a health system's history, events/s and peak memory (DESIGN §10).

Run ``python -m tests.benchmarks.bench_scale`` (or ``make bench``) from the repository
root. It simulates a multi-site health system with ``streams.simulate`` (default: 6 sites,
both algorithms, 20 studies per site and day, seed 1) for one year and for ``--factor``
(default 4) times as long, writes each as JSON Lines, and replays each file in a fresh
process (so that peak RSS is that replay's own) through the same code as ``imgov replay``
(final values only, chunks of 500 events, the garbage-collector thresholds of the CLI):

* ``parse_validate``: reading and validating the file alone (the ceiling: a replay
  cannot be faster than reading its input);
* ``replay_null``: the governance core with no sink (``imgov replay`` without output);
* ``replay_jsonl``: into the JSON Lines sink (``imgov replay --out``);
* ``replay_chdb``: into chDB with the input events in ``event_log`` (``--chdb``);
* ``replay_jsonl_one_process``, ``replay_chdb_one_process``: the same in one process
  (``--one-process``); the others run the KPI windows in a second process, as ``imgov
  replay`` does by default (``streams.replay.parallel``), and their peak RSS is the sum
  of both processes' peaks.

For each it reports events/s, the ratio to the ceiling measured in the same run, and
peak RSS; for each sink, the RSS of ``--factor`` times the history over one year (DESIGN
§10: at most 1.25 for four times the history). It prints a table and appends one JSON
line to ``.imgov/bench/results.jsonl``. Figures on a shared machine are noisy: compare
ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01: every simulated timestamp is "past"
MEASURES = (
    "parse_validate",
    "replay_null",
    "replay_jsonl",
    "replay_chdb",
    "replay_jsonl_one_process",
    "replay_chdb_one_process",
)


def _child(measure: str, path: Path, workdir: Path) -> dict[str, float]:
    """Runs one measure in this (fresh) process; returns its events, seconds and peak RSS."""
    from schemas.files import RejectedInput, read_events
    from schemas.validation import EventValidator
    from sinks.base import Sink
    from sinks.null import NullSink
    from streams.governance import (
        DEMO_SETTINGS,
        build_processor,
        build_pseudonymiser,
        load_settings,
        tune_garbage_collector,
    )
    from streams.replay.driver import replay
    from streams.replay.parallel import replay_parallel

    tune_garbage_collector()
    if measure == "parse_validate":
        validator = EventValidator(lambda: FAR_FUTURE_MS)
        started = time.perf_counter()
        events = sum(
            1
            for item in read_events(path, validator=validator)
            if not isinstance(item, RejectedInput)
        )
        seconds = time.perf_counter() - started
    else:
        settings = load_settings(DEMO_SETTINGS, demo=True)
        kpi = settings.kpi.model_copy(update={"emit_interval_ms": None})
        settings = settings.model_copy(update={"kpi": kpi})
        one_process = measure.endswith("_one_process")
        target = measure.removesuffix("_one_process")
        sink: Sink
        if target == "replay_jsonl":
            from sinks.jsonl import JsonLinesSink

            sink = JsonLinesSink(workdir / "out")
        elif target == "replay_chdb":
            from sinks.chdb import ChdbSink

            pseudonymiser = build_pseudonymiser(settings)
            sink = ChdbSink(
                workdir / "chdb", clean_event=pseudonymiser.pseudonymise_event, background=True
            )
        else:
            sink = NullSink()
        validator = EventValidator(lambda: FAR_FUTURE_MS)
        started = time.perf_counter()
        if one_process:
            stats = replay(
                [path],
                build_processor(settings),
                sink,
                validator,
                record_events=target == "replay_chdb",
            )
        else:
            stats = replay_parallel(
                [path], settings, [sink], validator, record_events=target == "replay_chdb"
            )
        sink.close()
        seconds = time.perf_counter() - started
        events = stats.events
        if stats.rejected:
            raise SystemExit(f"{stats.rejected} inputs rejected: the benchmark input is bad")
    # Both processes of a parallel replay live to the end: their peaks add up (an upper
    # bound of the pair's peak; the KPI process's ru_maxrss counts from its spawn).
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "events": events,
        "seconds": seconds,
        "peak_rss_mb": (_peak_rss_kb() + children_kb) / 1024,
    }


def _peak_rss_kb() -> int:
    """This process's peak resident set (``VmHWM``).

    Not ``getrusage``: Linux carries ``ru_maxrss`` over ``execve``, so a child would
    report its parent's peak at the fork when that is higher (the parent holds the
    simulated history). ``VmHWM`` belongs to the address space the exec created.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _measure(measure: str, path: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="imgov-bench-scale-run-") as workdir:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.bench_scale",
                "--child",
                measure,
                str(path),
                workdir,
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["events_per_s"] = result["events"] / result["seconds"]
    return result


def _simulate(path: Path, *, days: int, sites: int, per_day: float, seed: int) -> int:
    from streams.simulate.config import SimulationConfig
    from streams.simulate.output import write_events
    from streams.simulate.run import run_simulation

    run = run_simulation(
        SimulationConfig(seed=seed, days=days, sites=sites, studies_per_day=per_day)
    )
    return write_events(path, (delivery.event for delivery in run.deliveries))


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--studies-per-day", type=float, default=20.0)
    parser.add_argument("--days", type=int, default=365, help="the base history")
    parser.add_argument("--factor", type=int, default=4, help="the long history, in bases")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--measures", default=",".join(MEASURES), help=f"comma-separated, of {MEASURES}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    parser.add_argument(
        "--child", nargs=3, metavar=("MEASURE", "INPUT", "WORKDIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        measure, path, workdir = args.child
        print(json.dumps(_child(measure, Path(path), Path(workdir))))
        return {}

    measures = [m for m in args.measures.split(",") if m]
    unknown = set(measures) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measures {sorted(unknown)}; choose from {MEASURES}")
    histories = {"1x": args.days, f"{args.factor}x": args.days * args.factor}
    results: dict[str, dict[str, dict[str, float]]] = {}
    inputs: dict[str, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix="imgov-bench-scale-"))
    try:
        for name, days in histories.items():
            path = tmp / f"{name}.jsonl"
            started = time.perf_counter()
            inputs[name] = _simulate(
                path, days=days, sites=args.sites, per_day=args.studies_per_day, seed=args.seed
            )
            print(
                f"simulated {name}: {days} days x {args.sites} sites, {inputs[name]:,} events "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
            results[name] = {}
            for measure in measures:
                results[name][measure] = _measure(measure, path)
                r = results[name][measure]
                print(
                    f"  {measure:<25} {r['events_per_s']:>9,.0f} events/s "
                    f"{r['seconds']:>7.1f} s  peak RSS {r['peak_rss_mb']:>6.0f} MB",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    long = f"{args.factor}x"
    rows = []
    for measure in measures:
        base, more = results["1x"][measure], results[long][measure]
        ceiling = results["1x"].get("parse_validate")
        rows.append(
            {
                "measure": measure,
                "events_per_s": round(base["events_per_s"]),
                "ratio_to_parse_validate": (
                    round(base["events_per_s"] / ceiling["events_per_s"], 3) if ceiling else None
                ),
                "peak_rss_mb": round(base["peak_rss_mb"]),
                f"peak_rss_mb_{long}": round(more["peak_rss_mb"]),
                "rss_ratio": round(more["peak_rss_mb"] / base["peak_rss_mb"], 3),
            }
        )
    print()
    print(
        f"{'measure':<25} {'events/s':>9} {'/ceiling':>8} {'RSS 1x':>7} {'RSS ' + long:>7} "
        f"{'ratio':>6}"
    )
    for row in rows:
        ratio = row["ratio_to_parse_validate"]
        print(
            f"{row['measure']:<25} {row['events_per_s']:>9,} "
            f"{'' if ratio is None else f'{ratio:.3f}':>8} {row['peak_rss_mb']:>6} M "
            f"{row[f'peak_rss_mb_{long}']:>5} M {row['rss_ratio']:>6.2f}"
        )
    record: dict[str, object] = {
        "bench": "scale",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sites": args.sites,
        "studies_per_day": args.studies_per_day,
        "days": args.days,
        "factor": args.factor,
        "events": inputs,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
