"""The demo's audit tables answer the README's compliance queries with the right numbers.

Expected numbers are computed here, independently of the tables and of the KPI code:
from the simulator's ground truth (``truth.jsonl``: what the AI said, what the final
report said, whether anyone answered the alert), from the input events, and from the
lineage and breach outputs the replay also wrote as JSON Lines.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.units import DAY_MS
from sinks.query import ChdbBackend
from streams.paths import REPO_ROOT
from streams.replay.demo import DemoRun
from streams.report.page import COMPLIANCE_QUERIES

INTERACTIONS = {"VIEWED", "ACKNOWLEDGED", "ACCEPTED", "MODIFIED", "DISMISSED"}
OUTCOMES = {
    ("POSITIVE", "PRESENT"): "tp",
    ("POSITIVE", "ABSENT"): "fp",
    ("NEGATIVE", "PRESENT"): "fn",
    ("NEGATIVE", "ABSENT"): "tn",
}


def sql_of(title_start: str) -> str:
    return next(sql for title, sql in COMPLIANCE_QUERIES if title.startswith(title_start))


def jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


@pytest.fixture
def backend(small_demo: DemoRun) -> Iterator[ChdbBackend]:
    opened = ChdbBackend(small_demo.options.chdb_path)
    yield opened
    opened.close()


def run(backend: ChdbBackend, sql: str) -> list[dict[str, Any]]:
    columns, rows = backend.execute(sql)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def truth_rows(demo: DemoRun) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(study, algorithm) pairs of the ground truth."""
    for study in jsonl(demo.options.truth_path):
        for algorithm in study["algorithms"]:
            yield study, algorithm


def truth_outcome(study: dict[str, Any], algorithm: dict[str, Any]) -> str | None:
    """tp/fp/fn/tn as the report finally says (an addendum's label replaces the first)."""
    if algorithm["inference_status"] != "SUCCEEDED" or study["report_final_at_ms"] is None:
        return None
    label = algorithm["addendum_label"] or algorithm["final_label"]
    return OUTCOMES.get((algorithm["ai_result"], label))


def close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) < 0.0006


def test_scorecard_of_one_site_matches_the_ground_truth(
    small_demo: DemoRun, backend: ChdbBackend
) -> None:
    rows = {r["algorithm_name"]: r for r in run(backend, sql_of("Scorecard of one site"))}
    expected: dict[str, Counter[str]] = {}
    for study, algorithm in truth_rows(small_demo):
        if study["site_id"] != "site-02" or algorithm["inference_status"] is None:
            continue
        counts = expected.setdefault(algorithm["algorithm_name"], Counter())
        counts["studies"] += 1
        outcome = truth_outcome(study, algorithm)
        if outcome:
            counts[outcome] += 1
        if outcome == "fp" and algorithm["alert_final_state"] not in INTERACTIONS:
            counts["review_candidates"] += 1

    assert set(rows) == set(expected) == {"ich-detect", "pe-detect"}
    for name, counts in expected.items():
        row = rows[name]
        tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
        assert (row["studies"], row["tp"], row["fp"], row["fn"], row["tn"]) == (
            counts["studies"],
            tp,
            fp,
            fn,
            tn,
        ), name
        assert close(row["ppv"], tp / (tp + fp))
        assert close(row["sens"], tp / (tp + fn))
        assert close(row["spec"], tn / (tn + fp))
        assert close(row["discordance"], (fp + fn) / (tp + fp + fn + tn))
        assert row["review_candidates"] == counts["review_candidates"]
    # The drift is visible where it was injected: ICH specificity at site-02 is lower.
    assert rows["ich-detect"]["spec"] < rows["pe-detect"]["spec"]


def test_open_breaches_are_the_breaches_opened_and_never_resolved(
    small_demo: DemoRun, backend: ChdbBackend
) -> None:
    rows = run(backend, sql_of("Open breaches"))
    states: dict[str, set[str]] = {}
    opened: dict[str, dict[str, Any]] = {}
    for breach in jsonl(small_demo.options.outputs_path / "breach.jsonl"):
        states.setdefault(breach["breach_id"], set()).add(breach["state"])
        if breach["state"] == "OPEN":
            opened[breach["breach_id"]] = breach
    still_open = [opened[b] for b, s in states.items() if s == {"OPEN"}]

    def key(b: dict[str, Any]) -> tuple[Any, ...]:
        return (b["rule_id"], b["site_id"], b["algorithm_name"], b["window_size"], b["evidence"])

    assert sorted(map(key, rows)) == sorted(map(key, still_open))
    for row in rows:
        assert (
            row["evidence"].startswith("opened: ") and f"rule {row['rule_id']}." in row["evidence"]
        )

    # The Mayo rule fires on the drifted series, and only there.
    sustained = [r for r in rows if r["rule_id"] == "sustained-discordance"]
    assert [(r["site_id"], r["algorithm_name"], r["severity"]) for r in sustained] == [
        ("site-02", "ich-detect", "CRITICAL")
    ]
    # Its evidence lists seven daily windows, each above the bound it names.
    evidence = sustained[0]["evidence"]
    found = re.search(r"above ([0-9.]+), the upper Wilson", evidence)
    assert found is not None, evidence
    bound = float(found.group(1))
    daily = [float(v) for v in re.findall(r"\) ([0-9.]+) \(\d+/\d+\)", evidence)]
    assert len(daily) == 7 and all(v > bound for v in daily)


def test_final_30_day_ppv_per_site_matches_the_ground_truth(
    small_demo: DemoRun, backend: ChdbBackend
) -> None:
    rows = run(backend, sql_of("Final 30-day alert PPV"))
    # The window ends with the last day on which an AI result came back.
    last = max(
        event.get("completed_at_ms") or event["occurred_at_ms"]
        for event in jsonl(small_demo.options.events_path)
        if event["event_type"] == "inference" and event["status"] == "SUCCEEDED"
    )
    end = last - last % DAY_MS + DAY_MS
    start = end - 30 * DAY_MS
    expected: dict[tuple[str, str], Counter[str]] = {}
    for study, algorithm in truth_rows(small_demo):
        outcome = truth_outcome(study, algorithm)
        if outcome in {"tp", "fp"} and start <= study["report_final_at_ms"] < end:
            key = (study["site_id"], algorithm["algorithm_name"])
            expected.setdefault(key, Counter())[outcome] += 1

    got = {(r["site_id"], r["algorithm_name"]): r for r in rows}
    assert set(got) == set(expected) and len(got) == 4
    for key, counts in expected.items():
        row = got[key]
        assert (row["tp"], row["alerts_labelled"]) == (counts["tp"], counts["tp"] + counts["fp"])
        assert close(row["ppv"], counts["tp"] / (counts["tp"] + counts["fp"]))
        assert row["ci_low"] <= row["ppv"] <= row["ci_high"]


def test_lineage_of_one_study_lists_every_revision(
    small_demo: DemoRun, backend: ChdbBackend
) -> None:
    revisions: dict[str, list[dict[str, Any]]] = {}
    for record in jsonl(small_demo.options.outputs_path / "lineage.jsonl"):
        revisions.setdefault(record["study_uid"], []).append(record)
    # A study with two algorithms would be a PE+ICH exam; take one with several revisions.
    study_uid, records = max(revisions.items(), key=lambda kv: (len(kv[1]), kv[0]))
    assert len(records) >= 2
    sql = sql_of("Every revision of one study").replace("<study_uid>", study_uid)
    rows = run(backend, sql)
    expected = sorted(
        (
            r["algorithm_name"],
            r["revision"],
            r["outcome"],
            r["completeness"],
            r["ai_result"],
            r["report_label"],
            r["alert_final_state"],
            len(r["event_ids"]),
            r["record_hash"][:12],
        )
        for r in records
    )
    assert [tuple(row.values()) for row in rows] == expected


def test_readme_shows_the_queries_the_tests_check() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    flat = " ".join(readme.split())
    for title, sql in COMPLIANCE_QUERIES:
        pattern = re.escape(" ".join(sql.split())).replace(re.escape("<study_uid>"), "[^']+")
        assert re.search(pattern, flat), f"README lacks the query {title!r}"
