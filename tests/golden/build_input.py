"""Builds ``replay_input.jsonl``, the golden replay input, from hand-written stories.

Run ``python -m tests.golden.build_input`` to rewrite it (then re-run the golden test
with ``IMGOV_UPDATE_GOLDEN=1`` and review the diff of ``expected/`` by hand).

Each study tells one story; the delivery order below is deliberately not event-time
order, with a duplicate, late reports, an addendum that flips the label, an expired
study, an event after eviction and invalid lines between valid ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
T = 1_772_438_400_000  # 2026-03-02T08:00:00Z
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
SITE = "site-01"


def uid(letter: str) -> str:
    return f"1.2.826.0.1.3680043.10.1.20260302.{ord(letter)}"


def inference(
    eid: str,
    study: str,
    at: int,
    *,
    algo: str = "ich",
    score: float | None,
    result: str,
    status: str = "SUCCEEDED",
    failure: str | None = None,
) -> dict[str, Any]:
    name, version, finding, part = {
        "ich": ("ich-detect", "2.3.1", "ICH", "HEAD"),
        "pe": ("pe-detect", "1.8.0", "PE", "CHEST"),
    }[algo]
    return {
        "event_type": "inference",
        "event_id": eid,
        "occurred_at_ms": at,
        "site_id": SITE,
        "study_uid": uid(study),
        "accession_number": f"ACC-{study}",
        "patient_id": f"PAT-{study}",
        "modality": "CT",
        "body_part": part,
        "manufacturer": "SIEMENS",
        "algorithm_name": name,
        "algorithm_version": version,
        "finding_code": finding,
        "status": status,
        "failure_reason": failure,
        "score": score,
        "threshold": 0.5,
        "result": result,
        "study_available_at_ms": at - 3 * MIN,
        "started_at_ms": at - 2 * MIN,
        "completed_at_ms": at,
    }


def alert(
    eid: str,
    study: str,
    at: int,
    state: str,
    *,
    inference_id: str,
    channel: str = "WORKLIST_REPRIORITISATION",
) -> dict[str, Any]:
    return {
        "event_type": "alert",
        "event_id": eid,
        "occurred_at_ms": at,
        "site_id": SITE,
        "study_uid": uid(study),
        "alert_id": f"AL-{study}",
        "inference_event_id": inference_id,
        "algorithm_name": "ich-detect",
        "algorithm_version": "2.3.1",
        "finding_code": "ICH",
        "state": state,
        "channel": channel,
        "recipient_role": "NEURORADIOLOGIST",
        "recipient_id": "RAD-7",
        "priority_before": "ROUTINE",
        "priority_after": "STAT",
        "dismiss_reason": None,
    }


def report(
    eid: str,
    study: str,
    at: int,
    status: str,
    labels: dict[str, str],
    *,
    part: str = "HEAD",
    report_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_type": "report",
        "event_id": eid,
        "occurred_at_ms": at,
        "site_id": SITE,
        "study_uid": uid(study),
        "accession_number": f"ACC-{study}",
        "patient_id": f"PAT-{study}",
        "modality": "CT",
        "body_part": part,
        "procedure_code": None,
        "report_id": report_id or f"RPT-{study}",
        "parent_report_id": None,
        "status": status,
        "hl7_result_status": status[0],
        "interpreter_id": "RAD-7",
        "exam_completed_at_ms": T if study < "H" else T + 32 * DAY,
        "findings": [
            {"finding_code": code, "label": label, "label_method": "STRUCTURED"}
            for code, label in labels.items()
        ],
        "critical_result_communicated_at_ms": None,
    }


def stories() -> list[dict[str, Any] | str]:
    """The input in delivery order; a plain string is an invalid line, as written."""
    a_inf = inference("A-inf", "A", T + 2 * MIN, score=0.91, result="POSITIVE")
    b_inf = inference("B-inf", "B", T + HOUR, score=0.62, result="POSITIVE")
    return [
        # A: true positive, answered. The final report arrives before the inference.
        report("A-rep-final", "A", T + 50 * MIN, "FINAL", {"ICH": "PRESENT"}),
        a_inf,
        alert("A-al-raised", "A", T + 3 * MIN, "RAISED", inference_id="A-inf"),
        a_inf,  # a duplicate delivery: changes nothing
        alert("A-al-ack", "A", T + 8 * MIN, "ACKNOWLEDGED", inference_id="A-inf"),
        report("A-rep-prelim", "A", T + 30 * MIN, "PRELIMINARY", {"ICH": "PRESENT"}),
        "this line is not JSON",
        # B: false positive on a channel nobody answers: a review candidate.
        b_inf,
        alert(
            "B-al-raised",
            "B",
            T + HOUR + MIN,
            "RAISED",
            inference_id="B-inf",
            channel="MOBILE_PUSH",
        ),
        alert(
            "B-al-expired",
            "B",
            T + 2 * HOUR,
            "EXPIRED",
            inference_id="B-inf",
            channel="MOBILE_PUSH",
        ),
        report("B-rep-final", "B", T + HOUR + 40 * MIN, "FINAL", {"ICH": "ABSENT"}),
        # C: PE read negative by AI and report; an addendum two days later finds PE.
        inference("C-inf", "C", T + 3 * HOUR, algo="pe", score=0.21, result="NEGATIVE"),
        report("C-rep-final", "C", T + 4 * HOUR, "FINAL", {"PE": "ABSENT"}, part="CHEST"),
        json.dumps({**inference("X-bad-score", "X", T, score=1.7, result="POSITIVE")}),
        # D: an eligible head CT reported without any inference: NO_AI_RESULT (coverage).
        report("D-rep-final", "D", T + 5 * HOUR, "FINAL", {"ICH": "ABSENT"}),
        # E: the AI timed out.
        inference(
            "E-inf",
            "E",
            T + 6 * HOUR,
            score=None,
            result="NOT_APPLICABLE",
            status="TIMED_OUT",
            failure="no GPU available within 600 s",
        ),
        report("E-rep-final", "E", T + 7 * HOUR, "FINAL", {"ICH": "ABSENT"}),
        # F: true negative whose report arrives three days late.
        inference("F-inf", "F", T + 8 * HOUR, score=0.05, result="NEGATIVE"),
        json.dumps({**report("Y-empty-study", "Y", T, "FINAL", {}), "study_uid": ""}),
        report("C-rep-amended", "C", T + 2 * DAY, "AMENDED", {"PE": "PRESENT"}, part="CHEST"),
        report("F-rep-final", "F", T + 9 * HOUR, "FINAL", {"ICH": "ABSENT"}),
        # G: an inference whose report never comes; H, a month later, moves event time
        # past G's retention, so G expires, and G's late report is a dead letter.
        inference("G-inf", "G", T + 10 * HOUR, score=0.12, result="NEGATIVE"),
        json.dumps({"event_type": "radiology", "event_id": "Z-unknown-type"}),
        inference("H-inf", "H", T + 32 * DAY, score=0.08, result="NEGATIVE"),
        report("H-rep-final", "H", T + 32 * DAY + HOUR, "FINAL", {"ICH": "ABSENT"}),
        report("G-rep-final-late", "G", T + 11 * HOUR, "FINAL", {"ICH": "ABSENT"}),
    ]


def main() -> None:
    lines = []
    for item in stories():
        lines.append(item if isinstance(item, str) else json.dumps(item, separators=(",", ":")))
    (HERE / "replay_input.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
