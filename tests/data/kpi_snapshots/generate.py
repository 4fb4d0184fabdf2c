"""Writes the KPI snapshot fixture of the running release.

Usage: ``python -m tests.data.kpi_snapshots.generate tests/data/kpi_snapshots/<format>``.

A release that changes the KPI state format runs this *before* the change, into a folder
named after the format it replaces, and commits it: ``test_kpi_state_migration`` then
checks that snapshots written by that release restore, with the new code, to the same
final outputs. The folder holds:

- ``contributions.jsonl.gz``: a contributions log (two partitions), as the lineage stage
  writes it for a simulated run with a drift (so that breaches open);
- ``state.jsonl.gz``: the KPI table (rows and one snapshot per partition) after the
  release processed and checkpointed the log up to ``manifest.json``'s ``restore_from``;
- ``outputs_before.jsonl.gz``: the final KPI values and breaches it emitted up to there;
- ``outputs_all.jsonl.gz``: those it emitted for the whole log, uninterrupted.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

from schemas.codec import Codec
from schemas.registry import registry_from_environ
from streams.core.kpi.aggregator import KpiAggregator
from streams.governance import (
    build_breach_evaluator,
    build_pseudonymiser,
    lineage_config,
    load_settings,
)
from streams.runtime.outputs import InputMessage, OutputEncoder, kpi_window_key
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping
from streams.runtime.stages import KpiStage, LineageStage
from streams.runtime.stages.kpi import KpiBatch
from streams.simulate.config import DriftScenario, SimulationConfig
from streams.simulate.run import run_simulation
from streams.topics import WorkerTopics

TOPICS = WorkerTopics.with_namespace("fixture.")
INPUT_PARTITIONS = 3
KPI_PARTITIONS = 2
NOW_MS = 1_760_000_000_000
SIMULATION = SimulationConfig(
    seed=16,
    days=21,
    sites=2,
    studies_per_day=12.0,
    drifts=(DriftScenario(site_id="site-01", start_day=10, magnitude=0.3),),
)
BATCH = 40
RESTORE_FRACTION = 0.6


def codec() -> Codec:
    return Codec(registry_from_environ({}))


def kpi_stage(store: DictPartitionedStore) -> KpiStage:
    """The KPI stage as the worker builds it (demo settings, the default breach policy)."""
    settings = load_settings(demo=True)
    return KpiStage(
        codec(),
        StagedMapping(store),
        StagedMapping(store),
        lambda: KpiAggregator(settings.kpi, current_on_demand=True),
        lambda: build_breach_evaluator(settings),
        upstream_partitions=INPUT_PARTITIONS,
        topic=TOPICS.contributions,
    )


def contributions_log() -> list[InputMessage]:
    """The contributions the lineage stage writes for ``SIMULATION``, in log order."""
    settings = load_settings(demo=True)
    enc = codec()
    events = [d.event for d in run_simulation(SIMULATION).deliveries]
    inputs = []
    next_offset = [0] * INPUT_PARTITIONS
    for e in events:
        p = zlib.crc32(e.study_uid.encode()) % INPUT_PARTITIONS
        inputs.append(
            InputMessage(TOPICS.inference, p, next_offset[p], e.study_uid.encode(), enc.encode(e))
        )
        next_offset[p] += 1
    stage = LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        enc,
        StagedMapping(DictPartitionedStore()),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
    )
    stage.assign(range(INPUT_PARTITIONS))
    encoder = OutputEncoder(enc, TOPICS)
    out = []
    for i in range(0, len(inputs), BATCH):
        batch = stage.process(inputs[i : i + BATCH])
        stage.state.commit()
        out += encoder.contributions(batch.lineage)
        out += encoder.watermarks(stage.watermark_updates(), KPI_PARTITIONS)
    out += encoder.close_markers(KPI_PARTITIONS)
    offsets = [0] * KPI_PARTITIONS
    log = []
    for m in out:
        p = m.partition if m.partition is not None else zlib.crc32(m.key or b"") % KPI_PARTITIONS
        log.append(InputMessage(TOPICS.contributions, p, offsets[p], m.key, m.value, m.headers))
        offsets[p] += 1
    return log


def outputs(batches: Iterable[KpiBatch]) -> list[dict[str, object]]:
    """The latest final value of each window and every breach message, as JSON rows."""
    finals: dict[str, dict[str, object]] = {}
    breaches: list[dict[str, object]] = []
    for batch in batches:
        for v in batch.kpis:
            if v.final:
                finals[kpi_window_key(v)] = {"kind": "kpi", **v.model_dump(mode="json")}
        breaches += [{"kind": "breach", **b.model_dump(mode="json")} for b in batch.breaches]
    return [finals[k] for k in sorted(finals)] + breaches


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _write_jsonl(path: Path, rows: Iterable[object]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")


def main(folder: Path) -> None:
    log = contributions_log()
    restore_from = int(len(log) * RESTORE_FRACTION)
    store = DictPartitionedStore()
    stage = kpi_stage(store)
    before = []
    for i in range(0, restore_from, BATCH):
        before.append(stage.process(log[i : min(i + BATCH, restore_from)]))
        store.write(stage.take_writes())
    uninterrupted = kpi_stage(DictPartitionedStore())
    everything = [uninterrupted.process(log[i : i + BATCH]) for i in range(0, len(log), BATCH)]

    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        folder / "contributions.jsonl.gz",
        (
            {
                "partition": m.partition,
                "offset": m.offset,
                "key": _b64(m.key),
                "value": _b64(m.value),
                "headers": [[k, _b64(v)] for k, v in m.headers],
            }
            for m in log
        ),
    )
    _write_jsonl(
        folder / "state.jsonl.gz",
        ({"key": _b64(k), "value": _b64(v)} for k, v in sorted(store.data.items())),
    )
    _write_jsonl(folder / "outputs_before.jsonl.gz", outputs(before))
    _write_jsonl(folder / "outputs_all.jsonl.gz", outputs(everything))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    manifest = {
        "written_by_commit": commit,
        "simulation": SIMULATION.model_dump(mode="json"),
        "input_partitions": INPUT_PARTITIONS,
        "kpi_partitions": KPI_PARTITIONS,
        "batch": BATCH,
        "restore_from": {
            str(p): sum(1 for m in log[:restore_from] if m.partition == p)
            for p in range(KPI_PARTITIONS)
        },
        "restore_from_index": restore_from,
        "messages": len(log),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{folder}: {len(log)} contributions, restore from {restore_from}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
