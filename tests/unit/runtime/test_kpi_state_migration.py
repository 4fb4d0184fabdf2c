"""KPI snapshots: the previous release's (pickles, read as data) and format 1 restore exactly.

The fixture in ``tests/data/kpi_snapshots/pickle-v3`` was written by the release before
format 1 (``generate.py`` at the commit its manifest names): a contributions log, the
KPI table after that release checkpointed part of it, and the outputs it emitted before
that point and for the whole log uninterrupted.
"""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest

from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.snapshot import MAGIC, SnapshotError, decode_snapshot
from streams.runtime.legacy_snapshot import LegacySnapshotError, legacy_document
from streams.runtime.outputs import InputMessage
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping
from streams.runtime.stages.kpi import KpiBatch, KpiStage
from tests.data.kpi_snapshots import generate

FIXTURES = Path(generate.__file__).parent


def _rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _log(folder: Path) -> list[InputMessage]:
    return [
        InputMessage(
            generate.TOPICS.contributions,
            r["partition"],
            r["offset"],
            _bytes(r["key"]),
            _bytes(r["value"]) or b"",
            tuple((k, _bytes(v) or b"") for k, v in r["headers"]),
        )
        for r in _rows(folder / "contributions.jsonl.gz")
    ]


def _store(folder: Path) -> DictPartitionedStore:
    store = DictPartitionedStore()
    for r in _rows(folder / "state.jsonl.gz"):
        store.data[_bytes(r["key"]) or b""] = _bytes(r["value"]) or b""
    return store


def _run(stage: KpiStage, store: DictPartitionedStore, log: list[InputMessage]) -> list[KpiBatch]:
    batches = []
    for i in range(0, len(log), generate.BATCH):
        batches.append(stage.process(log[i : i + generate.BATCH]))
        store.write(stage.take_writes())
    return batches


def _merged(*outputs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The latest final value per window and every breach, over outputs in order."""
    finals: dict[str, Any] = {}
    breaches: list[dict[str, Any]] = []
    for rows in outputs:
        for row in rows:
            if row["kind"] == "kpi":
                key = json.dumps(
                    [
                        row[k]
                        for k in (
                            "kpi",
                            "window_size",
                            "window_start_ms",
                            "site_id",
                            "algorithm_name",
                            "algorithm_version",
                            "finding_code",
                        )
                    ]
                )
                finals[key] = row
            else:
                breaches.append(row)
    return finals, breaches


@pytest.mark.parametrize("folder", ["pickle-v3"])
def test_snapshots_of_the_previous_release_restore_to_the_same_final_outputs(folder: str) -> None:
    path = FIXTURES / folder
    manifest = json.loads((path / "manifest.json").read_text())
    log = _log(path)
    store = _store(path)
    snapshots = {k: v for k, v in store.data.items() if b"snapshot:" in k}
    assert len(snapshots) == manifest["kpi_partitions"]
    assert all(v[2:3] == b"\x80" for v in snapshots.values())  # pickles, as written then

    stage = generate.kpi_stage(store)
    after = generate.outputs(_run(stage, store, log[manifest["restore_from_index"] :]))

    finals, breaches = _merged(_rows(path / "outputs_before.jsonl.gz"), after)
    expected_finals, expected_breaches = _merged(_rows(path / "outputs_all.jsonl.gz"))
    assert len(expected_finals) > 20_000 and expected_breaches
    assert finals == expected_finals
    assert breaches == expected_breaches
    # What the stage wrote back is format 1.
    rewritten = {k: v for k, v in store.data.items() if b"snapshot:" in k}
    assert all(v[2:].startswith(MAGIC) for v in rewritten.values())


def test_the_current_release_restores_its_own_snapshots_at_every_checkpoint() -> None:
    """Format 1 round trip: a stage rebuilt from its snapshots after every batch
    emits what one uninterrupted stage emits (revisions included)."""
    log = _log(FIXTURES / "pickle-v3")
    one_store = DictPartitionedStore()
    uninterrupted = generate.outputs(_run(generate.kpi_stage(one_store), one_store, log))
    store = DictPartitionedStore()
    batches = []
    for i in range(0, len(log), generate.BATCH):
        stage = generate.kpi_stage(store)  # a new owner each batch: restored from the table
        batches.append(stage.process(log[i : i + generate.BATCH]))
        store.write(stage.take_writes())
    assert _merged(generate.outputs(batches)) == _merged(uninterrupted)


def test_a_snapshot_that_does_not_fit_the_schema_is_refused_naming_the_field() -> None:
    store = DictPartitionedStore()
    stage = generate.kpi_stage(store)
    _run(stage, store, _log(FIXTURES / "pickle-v3")[:200])
    key, raw = next((k, v) for k, v in store.data.items() if b"snapshot:" in k)
    snapshot = decode_snapshot(raw[2:])
    document = snapshot.model_dump(mode="json")
    document["aggregator"]["panes"]["compacted_to"] = "yesterday"
    bad = MAGIC + b"\x01" + zlib.compress(json.dumps(document).encode())
    with pytest.raises(SnapshotError, match=r"aggregator\.panes\.compacted_to"):
        decode_snapshot(bad)
    with pytest.raises(SnapshotError, match="format 9"):
        decode_snapshot(MAGIC + b"\x09" + raw[2 + len(MAGIC) + 1 :])
    with pytest.raises(SnapshotError, match="not a KPI state snapshot"):
        decode_snapshot(b"{}")
    # Restoring the partition fails with the partition named, not half-loaded.
    store.data[key] = raw[:2] + bad
    with pytest.raises(SnapshotError, match=r"kpi-contributions\.v1\[\d\]: .*compacted_to"):
        generate.kpi_stage(store).process(_log(FIXTURES / "pickle-v3")[200:210])


class _Payload:
    """An object whose unpickling would run code: it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_pickle_naming_foreign_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps(("applied-ranges+rows", _Payload(marker), None, None, [], ()))
    with pytest.raises(LegacySnapshotError, match="pathlib"):
        legacy_document(evil, {})
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [True, False], ids=["pickle-v3", "format-1"])
@pytest.mark.parametrize(
    "change", [{"response_sla_ms": 60_000}, {"late_horizon_ms": 3_600_000}], ids=str
)
def test_a_snapshot_built_with_other_kpi_settings_is_refused(
    legacy: bool, change: dict[str, int]
) -> None:
    """What a stored revision contributed depends on the SLA, the panes on the horizon:
    restoring them under other settings would retract what was never added."""
    path = FIXTURES / "pickle-v3"
    manifest = json.loads((path / "manifest.json").read_text())
    log = _log(path)
    store = _store(path)
    if not legacy:  # the stage rewrites its snapshots in format 1 at its next checkpoint
        stage = generate.kpi_stage(store)
        _run(stage, store, log[manifest["restore_from_index"] :][:80])
    settings = generate.load_settings(demo=True)
    other = settings.kpi.model_copy(update=change)
    stage = KpiStage(
        generate.codec(),
        StagedMapping(store),
        StagedMapping(store),
        lambda: KpiAggregator(other, current_on_demand=True),
        lambda: generate.build_breach_evaluator(settings),
        upstream_partitions=generate.INPUT_PARTITIONS,
        topic=generate.TOPICS.contributions,
    )
    (name,) = change
    with pytest.raises(SnapshotError, match=f"other settings \\({name}"):
        stage.process(log[-5:])
