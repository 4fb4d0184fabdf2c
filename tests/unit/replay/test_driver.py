"""Replay of several files: per-source and per-partition files equal one merged file.

Final results are compared as the live tests compare them: the latest lineage revision
per row without revision numbers and hashes, the latest final value of every KPI window
without its revision (windows emptied by retraction left out), breaches, and dead
letters by reason. Intermediate revisions depend on how the input is cut, by design.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Event
from schemas.files import RejectedInput, read_events
from schemas.records import Breach, DeadLetter, DeadLetterReason, KpiValue, LineageRecord
from sinks.memory import MemorySink
from streams.core.pipeline import GovernanceProcessor
from streams.governance import build_processor, build_validator, load_settings
from streams.replay.driver import ReplayStats, replay

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 6
CHATTY_POLICY = Path(__file__).with_name("chatty_policy.toml")


@cache
def _simulated(days: int = 40, seed: int = 3) -> tuple[str, ...]:
    """JSON lines of a simulated run in delivery order (late and duplicate events too)."""
    imgov = str(Path(sys.executable).with_name("imgov"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        subprocess.run(
            [imgov, "simulate", "--days", str(days), "--sites", "2", "--studies-per-day", "30",
             "--seed", str(seed), "--out", str(out), "-q"],
            check=True, cwd=REPO_ROOT, capture_output=True,
        )  # fmt: skip
        return tuple(line for line in out.read_text().splitlines(keepends=True) if line.strip())


def _write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(lines))
    return path


def _partition(line: str) -> int:
    # Keyed by study, like the input topics (any stable hash will do for the test).
    study = json.loads(line)["study_uid"]
    return sum(study.encode()) % PARTITIONS


def _replay(paths: Sequence[Path], chunk_size: int = 500) -> tuple[ReplayStats, MemorySink]:
    config = load_settings(demo=True)
    kpi = config.kpi.model_copy(update={"emit_interval_ms": None})
    config = config.model_copy(update={"kpi": kpi, "breach_policy": CHATTY_POLICY})
    sink = MemorySink()
    stats = replay(
        paths, build_processor(config), sink, build_validator(config), chunk_size=chunk_size
    )
    return stats, sink


def _all(sink: MemorySink) -> list[Any]:
    return [r for records in sink.flushed.values() for r in records]


def finals(records: Sequence[Any]) -> dict[str, Any]:
    """The final results of a run's outputs, in a comparable form."""
    lineage: dict[tuple[str, ...], LineageRecord] = {}
    kpis: dict[tuple[Any, ...], KpiValue] = {}
    breaches, rejected = [], Counter[str]()
    for r in records:
        if isinstance(r, LineageRecord):
            key = (r.site_id, r.study_uid, r.algorithm_name, r.finding_code)
            if key not in lineage or r.revision > lineage[key].revision:
                lineage[key] = r
        elif isinstance(r, KpiValue) and r.final:
            wkey = (r.kpi, r.window_size, r.window_start_ms, r.site_id, r.algorithm_name,
                    r.algorithm_version, r.finding_code)  # fmt: skip
            if wkey not in kpis or r.revision > kpis[wkey].revision:
                kpis[wkey] = r
        elif isinstance(r, Breach):
            # Which breaches open and resolve, where: the same however the input is cut.
            # Their values and evidence are the window's first final value, which a late
            # case may revise; a run whose watermark lags (the minimum over sources)
            # closes windows later and so sees fewer such revisions.
            breaches.append(r.model_dump_json(exclude={"value", "threshold", "evidence"}))
        elif isinstance(r, DeadLetter):
            rejected[r.reason.value] += 1
    hashes = {"revision", "prev_hash", "record_hash"}
    return {
        "lineage": {k: v.model_dump(exclude=hashes) for k, v in lineage.items()},
        "kpis": {
            k: v.model_dump(exclude={"revision"})
            for k, v in kpis.items()
            if v.denominator or v.numerator or v.value is not None
        },
        "breaches": sorted(breaches),
        "rejected": dict(rejected),
    }


def test_per_source_files_equal_the_merged_file(tmp_path: Path) -> None:
    lines = _simulated()
    merged_stats, merged = _replay([_write(tmp_path / "all.jsonl", lines)])
    by_type: dict[str, list[str]] = {}
    for line in lines:
        by_type.setdefault(json.loads(line)["event_type"], []).append(line)
    assert set(by_type) == {"inference", "alert", "report"}
    paths = [_write(tmp_path / f"{kind}.jsonl", part) for kind, part in by_type.items()]
    split_stats, split = _replay(paths)

    expected = finals(_all(merged))
    assert expected["kpis"] and expected["lineage"] and expected["breaches"]
    assert finals(_all(split)) == expected
    for stats in (merged_stats, split_stats):
        assert set(stats.too_late.values()) == {0}
        assert DeadLetterReason.LATE_AFTER_WINDOW_CLOSED.value not in stats.rejected_by_reason
    assert split_stats.files == 3 and split_stats.events == merged_stats.events


def test_per_partition_files_equal_the_merged_file(tmp_path: Path) -> None:
    lines = _simulated()
    _, merged = _replay([_write(tmp_path / "all.jsonl", lines)])
    parts: dict[int, list[str]] = {}
    for line in lines:
        parts.setdefault(_partition(line), []).append(line)
    paths = [_write(tmp_path / f"p{p}.jsonl", parts[p]) for p in sorted(parts)]
    stats, split = _replay(paths, chunk_size=97)
    assert len(paths) == PARTITIONS
    assert finals(_all(split)) == finals(_all(merged))
    assert set(stats.too_late.values()) == {0}


def test_a_file_holding_the_others_back_is_merged_not_read_after_them(tmp_path: Path) -> None:
    """Files given in any order: the one with the oldest events is not read last."""
    lines = _simulated()
    parts: dict[int, list[str]] = {}
    for line in lines:
        parts.setdefault(_partition(line), []).append(line)
    paths = [_write(tmp_path / f"p{p}.jsonl", parts[p]) for p in sorted(parts)]
    _, forward = _replay(paths)
    _, backward = _replay(paths[::-1])
    assert finals(_all(backward)) == finals(_all(forward))


def test_late_contributions_are_counted_and_dead_lettered(tmp_path: Path) -> None:
    """Days 20-28 delivered again (as new studies) after day 40: late, and said so."""
    lines = _simulated()
    parsed = [json.loads(line) for line in lines]
    start = min(e["occurred_at_ms"] for e in parsed)
    day = 86_400_000
    middle = [e for e in parsed if start + 20 * day <= e["occurred_at_ms"] < start + 28 * day]
    shifted = []
    for event in middle:
        event = dict(event)
        event["event_id"] = "late-" + event["event_id"]
        event["study_uid"] = event["study_uid"] + ".999999"
        if event.get("alert_id"):
            event["alert_id"] = "late-" + event["alert_id"]
        if event.get("report_id"):
            event["report_id"] = "late-" + event["report_id"]
        shifted.append(json.dumps(event) + "\n")
    main = _write(tmp_path / "main.jsonl", lines)
    # One source, in one order: the copy of the first quarter after everything else.
    late = _write(tmp_path / "late.jsonl", [*lines, *shifted])
    stats, sink = _replay([late])
    letters = [
        d for d in sink.records(DeadLetter) if d.reason is DeadLetterReason.LATE_AFTER_WINDOW_CLOSED
    ]
    assert sum(stats.too_late.values()) > 0
    assert stats.rejected_by_reason[DeadLetterReason.LATE_AFTER_WINDOW_CLOSED.value] == len(letters)
    assert letters and all("left out of:" in d.message for d in letters)
    # Every lineage row of a late study, and nothing else, missed its windows.
    late_rows = {
        (r.study_uid, r.algorithm_name)
        for r in sink.records(LineageRecord)
        if isinstance(r, LineageRecord) and r.study_uid.endswith(".999999")
    }
    missed = {
        (r.study_uid, r.algorithm_name)
        for r in (LineageRecord.model_validate_json(d.value) for d in letters)
    }
    assert missed == late_rows
    revision = LineageRecord.model_validate_json(letters[0].value)
    assert revision.study_uid.endswith(".999999") and letters[0].study_uid == revision.study_uid
    # Without the late copy nothing is late.
    clean, _ = _replay([main])
    assert set(clean.too_late.values()) == {0}


def _events(lines: Sequence[str], tmp: Path) -> list[Event]:
    path = _write(tmp / "events.jsonl", lines)
    validator = build_validator(load_settings(demo=True))
    events = [e for e in read_events(path, validator=validator) if not isinstance(e, RejectedInput)]
    assert len(events) == len(lines)
    return events


@cache
def _partitioned() -> tuple[tuple[tuple[int, Event], ...], dict[str, Any]]:
    """Events of a 30-day run with their partitions, and the finals of one big batch."""
    lines = _simulated(days=30, seed=8)
    with tempfile.TemporaryDirectory() as tmp:
        events = _events(lines, Path(tmp))
    keyed = tuple((_partition(line), e) for line, e in zip(lines, events, strict=True))
    processor = _processor()
    records = [*processor.process([e for _, e in keyed]), *processor.close()]
    assert set(processor.aggregator.too_late.values()) == {0}
    return keyed, finals(records)


def _processor() -> GovernanceProcessor:
    config = load_settings(demo=True)
    kpi = config.kpi.model_copy(update={"emit_interval_ms": None})
    return build_processor(config.model_copy(update={"kpi": kpi}))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), chunk=st.integers(1, 400))
def test_any_interleaving_that_keeps_each_partition_in_order_gives_the_same_finals(
    seed: int, chunk: int
) -> None:
    keyed, expected = _partitioned()
    queues: dict[int, list[Event]] = {}
    for p, event in keyed:
        queues.setdefault(p, []).append(event)
    rng = random.Random(seed)
    # A consumer reading partitions unevenly: long runs from one partition at a time.
    order: list[tuple[int, Event]] = []
    heads = dict.fromkeys(queues, 0)
    while heads:
        p = rng.choice(sorted(heads))
        run = rng.randint(1, 300)
        take = queues[p][heads[p] : heads[p] + run]
        order.extend((p, e) for e in take)
        heads[p] += len(take)
        if heads[p] >= len(queues[p]):
            del heads[p]
    processor = _processor()
    for p in queues:
        processor.watermarks.register(p)
    left = {p: len(q) for p, q in queues.items()}
    records: list[Any] = []
    for i in range(0, len(order), chunk):
        part = order[i : i + chunk]
        records += processor.process([e for _, e in part], [p for p, _ in part])
        for p, _ in part:
            left[p] -= 1
            if not left[p]:  # a partition read to its end stops holding time back
                records += processor.finish_source(p)
    records += processor.close()
    assert finals(records) == expected
    assert set(processor.aggregator.too_late.values()) == {0}
