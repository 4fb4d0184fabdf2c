"""A deliberately simple batch recomputation of every KPI from final lineage records.

DESIGN §5: the streaming value must equal a recomputation over the final lineage
table. This module recomputes the KPIs with plain loops, written from the DESIGN table
and without sharing code with ``streams.core`` (window arithmetic, definitions, Wilson
interval, quantiles and PSI are all re-implemented here), and builds lineage records
directly with pydantic. Other test modules import its helpers.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from schemas.events import InferenceResult, InferenceStatus
from schemas.records import Completeness, KpiValue, LineageRecord, Outcome, ReportLabel
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SIZES = {
    "1h": (HOUR_MS, HOUR_MS),
    "1d": (DAY_MS, DAY_MS),
    "7d": (7 * DAY_MS, DAY_MS),
    "30d": (30 * DAY_MS, DAY_MS),
}
SLA = 15 * MINUTE_MS


# -- building lineage records -----------------------------------------------------


@dataclass
class Study:
    """The facts of one lineage key; ``stages`` of them become its revisions."""

    site: str
    algorithm: str
    finding: str
    version: str | None
    uid: str
    inference: dict[str, Any] | None = None
    alert: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


if TYPE_CHECKING:
    from streams.core.kpi.aggregator import KpiAggregator

LATENESS = 2 * HOUR_MS


def feed(
    aggregator: KpiAggregator, old: LineageRecord | None, new: LineageRecord
) -> list[KpiValue]:
    """Applies one revision, then moves the watermark as one in-order source would."""
    return aggregator.apply(old, new) + aggregator.advance(new.updated_at_ms - LATENESS)


def outcome_of(fields: dict[str, Any]) -> Outcome:
    final = fields.get("report_final_at_ms") is not None
    status = fields.get("inference_status")
    if status is None:
        return Outcome.NO_AI_RESULT if final else Outcome.AWAITING_REPORT
    if status != InferenceStatus.SUCCEEDED:
        return Outcome.AI_FAILED
    if not final:
        return Outcome.AWAITING_REPORT
    label, result = fields.get("report_label"), fields.get("ai_result")
    table = {
        (InferenceResult.POSITIVE, ReportLabel.PRESENT): Outcome.TRUE_POSITIVE,
        (InferenceResult.POSITIVE, ReportLabel.ABSENT): Outcome.FALSE_POSITIVE,
        (InferenceResult.NEGATIVE, ReportLabel.PRESENT): Outcome.FALSE_NEGATIVE,
        (InferenceResult.NEGATIVE, ReportLabel.ABSENT): Outcome.TRUE_NEGATIVE,
    }
    return table.get((result, label), Outcome.INDETERMINATE)


def record(study: Study, revision: int, **fields: Any) -> LineageRecord:
    """Builds a lineage record with derived fields filled in the obvious way."""
    outcome = outcome_of(fields)
    times = [v for k, v in fields.items() if k.endswith("_at_ms") and v is not None]
    return LineageRecord(
        site_id=study.site,
        study_uid=study.uid,
        algorithm_name=study.algorithm,
        finding_code=study.finding,
        algorithm_version=study.version,
        outcome=outcome,
        interacted=fields.get("alert_first_response_at_ms") is not None,
        review_candidate=outcome == Outcome.FALSE_POSITIVE
        and fields.get("alert_first_response_at_ms") is None,
        completeness=Completeness.COMPLETE
        if fields.get("report_final_at_ms") is not None and fields.get("inference_status")
        else Completeness.OPEN,
        revision=revision,
        updated_at_ms=max(times),
        record_hash=f"h{study.uid}{revision}",
        **fields,
    )


def chain(study: Study) -> list[LineageRecord]:
    """Returns the revisions of a key: inference, then alert, response, report, addendum."""
    stages: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    if study.inference is not None:
        fields.update(study.inference)
        stages.append(dict(fields))
    alert = study.alert
    if "alert_raised_at_ms" in alert:
        fields["alert_raised_at_ms"] = alert["alert_raised_at_ms"]
        stages.append(dict(fields))
        if "alert_first_response_at_ms" in alert:
            fields.update(alert)
            fields["time_to_response_ms"] = (
                alert["alert_first_response_at_ms"] - alert["alert_raised_at_ms"]
            )
            stages.append(dict(fields))
    report = dict(study.report)
    addenda = report.pop("addendum_count", 0)
    if report:
        fields.update(report)
        if fields.get("exam_completed_at_ms") is not None:
            fields["report_tat_ms"] = fields["report_final_at_ms"] - fields["exam_completed_at_ms"]
        stages.append(dict(fields))
        if addenda:
            fields["addendum_count"] = addenda
            fields["critical_result_communicated_at_ms"] = report["report_final_at_ms"] + (
                study.report.get("addendum_delay_ms", HOUR_MS)
            )
            fields.pop("addendum_delay_ms", None)
            stages.append(dict(fields))
    for stage in stages:
        stage.pop("addendum_delay_ms", None)
    return [record(study, i + 1, **stage) for i, stage in enumerate(stages)]


def random_studies(rng: random.Random, n: int, span_ms: int = 3 * DAY_MS) -> list[Study]:
    """Random keys over ``span_ms`` from START: every branch of the KPI table occurs."""
    studies = []
    algorithms = [("ich", "ICH"), ("pe", "PE")]
    for i in range(n):
        algorithm, finding = rng.choice(algorithms)
        t0 = START + rng.randrange(span_ms)
        eligible_only = rng.random() < 0.08
        version = None if eligible_only else rng.choice(["1.0", "1.0", "2.0"])
        study = Study(rng.choice(["S1", "S2"]), algorithm, finding, version, f"u{i}")
        positive = rng.random() < 0.35
        if not eligible_only:
            status = rng.choice([InferenceStatus.SUCCEEDED] * 8 + list(InferenceStatus))
            completed = t0 + rng.randrange(1, 20 * MINUTE_MS)
            ok = status == InferenceStatus.SUCCEEDED
            study.inference = {
                "inference_status": status,
                "ai_result": (InferenceResult.POSITIVE if positive else InferenceResult.NEGATIVE)
                if ok
                else InferenceResult.NOT_APPLICABLE,
                "score": rng.choice([rng.random(), 0.0, 1.0, 0.5]) if ok else None,
                "study_available_at_ms": t0,
                "inference_completed_at_ms": completed if rng.random() < 0.95 else None,
                "time_to_result_ms": completed - t0,
            }
            if ok and positive and rng.random() < 0.9:
                raised = completed + rng.randrange(0, MINUTE_MS)
                study.alert["alert_raised_at_ms"] = raised
                if rng.random() < 0.85:
                    study.alert.update(
                        alert_first_response_at_ms=raised + rng.randrange(0, 4 * HOUR_MS),
                        alert_dismissed=rng.random() < 0.3,
                        alert_escalated=rng.random() < 0.1,
                    )
        if rng.random() < 0.85:
            final = t0 + rng.randrange(10 * MINUTE_MS, 2 * DAY_MS)
            study.report = {
                "report_final_at_ms": final,
                "exam_completed_at_ms": t0 - rng.randrange(0, HOUR_MS),
                "report_label": rng.choice(list(ReportLabel) + [ReportLabel.PRESENT] * 2),
            }
            if rng.random() < 0.15:
                study.report["addendum_count"] = rng.randint(1, 2)
                study.report["addendum_delay_ms"] = rng.randrange(HOUR_MS, 3 * DAY_MS)
        if study.inference is not None or study.report:
            studies.append(study)
    return studies


def interleave(chains: list[list[LineageRecord]], rng: random.Random) -> list[tuple[Any, Any]]:
    """Returns (old, new) pairs: a random interleaving keeping each key's order."""
    queues = [[(c[i - 1] if i else None, c[i]) for i in range(len(c))] for c in chains if c]
    out = []
    while queues:
        q = rng.randrange(len(queues))
        out.append(queues[q].pop(0))
        if not queues[q]:
            queues.pop(q)
    return out


def time_ordered(chains: list[list[LineageRecord]]) -> list[tuple[Any, Any]]:
    """Returns (old, new) pairs in the order a joiner would emit them (by event time)."""
    pairs = [(c[i - 1] if i else None, c[i]) for c in chains for i in range(len(c))]
    return sorted(pairs, key=lambda p: (p[1].updated_at_ms, p[1].study_uid, p[1].revision))


# -- the recomputation ------------------------------------------------------------


def samples(r: LineageRecord) -> list[tuple[str, int, str, Any]]:
    """(kpi, event time, kind, payload) of a record; kind: 'p' (num, den), 'd', 's'."""
    out: list[tuple[str, int, str, Any]] = []
    ok = r.inference_status == InferenceStatus.SUCCEEDED
    t_inf = r.inference_completed_at_ms
    if t_inf is None:
        t_inf = r.study_available_at_ms
    if r.inference_status is not None and t_inf is not None:
        out.append(("inference_failure_rate", t_inf, "p", (0 if ok else 1, 1)))
        if ok:
            positive = r.ai_result == InferenceResult.POSITIVE
            out.append(("ai_positive_rate", t_inf, "p", (int(positive), 1)))
            if r.time_to_result_ms is not None:
                out.append(("time_to_result", t_inf, "d", r.time_to_result_ms))
            if r.score is not None:
                out.append(("score_psi", t_inf, "s", min(9, max(0, math.floor(r.score * 10)))))
    raised = r.alert_raised_at_ms
    if raised is not None:
        answered = r.alert_first_response_at_ms is not None
        delay = r.alert_first_response_at_ms - raised if answered else None
        in_time = delay is not None and delay <= SLA
        out.append(("alert_response_rate", raised, "p", (int(in_time), 1)))
        out.append(("escalation_rate", raised, "p", (int(r.alert_escalated), 1)))
        if answered:
            out.append(("time_to_response", raised, "d", delay))
            out.append(("dismiss_rate", raised, "p", (int(r.alert_dismissed), 1)))
    final = r.report_final_at_ms
    if final is not None:
        o = r.outcome
        tp, fp = o == Outcome.TRUE_POSITIVE, o == Outcome.FALSE_POSITIVE
        fn, tn = o == Outcome.FALSE_NEGATIVE, o == Outcome.TRUE_NEGATIVE
        out.append(("coverage", final, "p", (int(o != Outcome.NO_AI_RESULT), 1)))
        amended = int(r.addendum_count > 0)
        out.append(("addendum_rate", final, "p", (amended, 1)))
        if tp or fp:
            out.append(("alert_ppv", final, "p", (int(tp), 1)))
            out.append(("review_candidates", final, "p", (int(r.review_candidate), 1)))
        if tp or fn:
            out.append(("sensitivity", final, "p", (int(tp), 1)))
        if tn or fp:
            out.append(("specificity", final, "p", (int(tn), 1)))
        if tp or fp or fn or tn:
            out.append(("discordance_rate", final, "p", (int(fp or fn), 1)))
        if tp or tn:
            out.append(("addendum_rate_concordant", final, "p", (amended, 1)))
        if fp or fn:
            out.append(("addendum_rate_discordant", final, "p", (amended, 1)))
        if ok and r.report_tat_ms is not None:
            if r.ai_result == InferenceResult.POSITIVE:
                out.append(("report_tat_ai_positive", final, "d", r.report_tat_ms))
            if r.ai_result == InferenceResult.NEGATIVE:
                out.append(("report_tat_ai_negative", final, "d", r.report_tat_ms))
    return out


def series_of(r: LineageRecord, kpi: str) -> list[tuple[str, str, str, str]]:
    v = r.algorithm_version
    rolled = [(r.site_id, r.algorithm_name, "*", r.finding_code)]
    rolled.append(("*", r.algorithm_name, "*", r.finding_code))
    if kpi == "coverage" or v is None:
        return rolled
    return [
        (r.site_id, r.algorithm_name, v, r.finding_code),
        ("*", r.algorithm_name, v, r.finding_code),
        *rolled,
    ]


def windows_of(t: int, size: int, step: int) -> list[int]:
    starts = []
    s = (t // step) * step
    while s + size > t:
        starts.append(s)
        s -= step
    return starts


def wilson(k: float, n: float) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def psi(actual: list[int], expected: list[int], eps: float = 1e-4) -> float:
    a_n, e_n = sum(actual), sum(expected)
    total = 0.0
    for a, e in zip(actual, expected, strict=True):
        pa = a / a_n if a else eps
        pe = e / e_n if e else eps
        total += (pa - pe) * math.log(pa / pe)
    return total


Key = tuple[str, str, int, str, str, str, str]
"""A KPI window of one series: (kpi, window size, start, site, algorithm, version, finding)."""


def window_key(v: KpiValue) -> Key:
    """Returns the window and series a streamed value belongs to, as ``batch_kpis`` keys it."""
    return (
        v.kpi,
        v.window_size,
        v.window_start_ms,
        v.site_id,
        v.algorithm_name,
        v.algorithm_version,
        v.finding_code,
    )


HOURLY_KPIS = frozenset(
    {"inference_failure_rate", "time_to_result", "alert_response_rate", "time_to_response"}
)
"""The operational KPIs, the only ones with 1 h windows (DESIGN §5)."""


def batch_kpis(
    records: list[LineageRecord], psi_reference_ms: int = 14 * DAY_MS
) -> dict[Key, dict[str, Any]]:
    """Every (kpi, window size, start, site, algorithm, version, finding) with data."""
    acc: dict[Key, Any] = {}
    score_days: dict[tuple[str, str, str, str], dict[int, list[int]]] = defaultdict(dict)
    for r in records:
        for kpi, t, kind, payload in samples(r):
            for dims in series_of(r, kpi):
                if kind == "s":
                    day = (t // DAY_MS) * DAY_MS
                    score_days[dims].setdefault(day, [0] * 10)[payload] += 1
                for size_name, (size, step) in SIZES.items():
                    if size_name == "1h" and kpi not in HOURLY_KPIS:
                        continue
                    for start in windows_of(t, size, step):
                        key = (kpi, size_name, start, *dims)
                        if kind == "p":
                            num, den = acc.get(key, (0, 0))
                            acc[key] = (num + payload[0], den + payload[1])
                        elif kind == "d":
                            acc.setdefault(key, []).append(payload)
                        else:
                            acc.setdefault(key, [0] * 10)[payload] += 1
    out: dict[Key, dict[str, Any]] = {}
    for key, value in acc.items():
        kpi, size_name, start = key[0], key[1], key[2]
        if kpi == "score_psi":
            days = score_days[key[3:]]  # type: ignore[index]
            first = min(days)
            reference = [0] * 10
            for day, bins in days.items():
                if day < first + psi_reference_ms:
                    reference = [a + b for a, b in zip(reference, bins, strict=True)]
            if start < first + psi_reference_ms:
                continue
            out[key] = {"denominator": sum(value), "value": psi(value, reference)}
        elif isinstance(value, list):
            ordered = sorted(value)
            n = len(ordered)
            # Nearest rank: the smallest sample with at least that share at or below it.
            p50, p90 = ordered[(n + 1) // 2 - 1], ordered[max(1, -(-9 * n // 10)) - 1]
            out[key] = {"denominator": n, "p50": p50, "p90": p90, "value": p50}
        else:
            num, den = value
            if den == 0:
                continue
            if kpi == "review_candidates":
                out[key] = {"numerator": num, "denominator": den, "value": num}
                continue
            scale = 100.0 if kpi == "ai_positive_rate" else 1.0
            low, high = wilson(num, den)
            out[key] = {
                "numerator": num,
                "denominator": den,
                "value": num / den * scale,
                "ci_low": low * scale,
                "ci_high": high * scale,
            }
    return out


def last_values(values: list[KpiValue]) -> dict[Key, KpiValue]:
    """The last emission of every window and series (what a compacted topic keeps)."""
    return {window_key(v): v for v in values}


def assert_matches_batch(values: dict[Key, KpiValue], expected: dict[Key, dict[str, Any]]) -> None:
    """Every non-empty streamed value equals its recomputation, and nothing is missing."""
    streamed = {k: v for k, v in values.items() if v.denominator}
    assert sorted(streamed) == sorted(expected)
    for key, want in expected.items():
        got = streamed[key]
        assert got.final, key
        duration = key[0].startswith(("time_", "report_tat"))
        for name, exact in want.items():
            actual = getattr(got, name)
            assert actual is not None, (key, name)
            if name in ("p50", "p90") or (duration and name == "value"):
                # Log-scale buckets: within 1 % of the exact sample quantile.
                assert abs(actual - exact) <= 0.01 * abs(exact), (key, name, actual, exact)
            else:
                assert math.isclose(actual, exact, rel_tol=1e-9, abs_tol=1e-9), (key, name)


# -- tests of this module and of the contribution definitions ---------------------


def test_chain_builds_increasing_revisions() -> None:
    studies = random_studies(random.Random(3), 50)
    for study in studies:
        revisions = chain(study)
        assert [r.revision for r in revisions] == list(range(1, len(revisions) + 1))
        assert all(a.updated_at_ms <= b.updated_at_ms for a, b in itertools.pairwise(revisions))


def test_hand_computed_values() -> None:
    """Two studies: values written out by hand, independent of both implementations."""
    from streams.core.kpi.aggregator import KpiAggregator

    t = START + 10 * HOUR_MS
    tp = Study("S1", "ich", "ICH", "1.0", "a")
    tp.inference = {
        "inference_status": InferenceStatus.SUCCEEDED,
        "ai_result": InferenceResult.POSITIVE,
        "score": 0.95,
        "study_available_at_ms": t,
        "inference_completed_at_ms": t + MINUTE_MS,
        "time_to_result_ms": MINUTE_MS,
    }
    tp.alert = {
        "alert_raised_at_ms": t + 61_000,
        "alert_first_response_at_ms": t + 61_000 + 20 * MINUTE_MS,  # outside the 15 min SLA
        "alert_dismissed": False,
    }
    tp.report = {
        "report_final_at_ms": t + 2 * HOUR_MS,
        "exam_completed_at_ms": t - 30 * MINUTE_MS,
        "report_label": ReportLabel.PRESENT,
    }
    fp = Study("S1", "ich", "ICH", "1.0", "b")
    fp.inference = {**tp.inference}
    fp.report = {**tp.report, "report_label": ReportLabel.ABSENT}
    aggregator = KpiAggregator()
    values = []
    for old, new in time_ordered([chain(tp), chain(fp)]):
        values += feed(aggregator, old, new)
    values += aggregator.close_all()
    last = last_values(values)

    def get(kpi: str, size: str = "1d") -> KpiValue:
        return last[(kpi, size, START, "S1", "ich", "1.0", "ICH")]

    assert (get("alert_ppv").numerator, get("alert_ppv").denominator) == (1, 2)
    assert get("alert_ppv").value == 0.5
    assert get("sensitivity").value == 1.0
    assert get("specificity").value == 0.0
    assert get("discordance_rate").value == 0.5
    assert get("review_candidates").value == 1  # the FP had no alert, nobody looked
    assert get("ai_positive_rate").value == 100.0
    assert get("alert_response_rate").value == 0.0
    assert get("time_to_response").p50 == pytest.approx(20 * MINUTE_MS, rel=0.01)
    assert get("report_tat_ai_positive").denominator == 2
    assert get("report_tat_ai_positive").p50 == pytest.approx(150 * MINUTE_MS, rel=0.01)
    assert ("coverage", "1d", START, "S1", "ich", "1.0", "ICH") not in last  # version * only
    cover = last[("coverage", "1d", START, "*", "ich", "*", "ICH")]
    assert (cover.numerator, cover.denominator, cover.value) == (2, 2, 1.0)
    # Hourly windows for the operational KPIs only (an hour of PPV is noise).
    hour = last[("time_to_response", "1h", t, "S1", "ich", "1.0", "ICH")]
    assert hour.window_end_ms == t + HOUR_MS and hour.final
    assert hour.p50 == pytest.approx(20 * MINUTE_MS, rel=0.01)
    for kpi in ("alert_ppv", "discordance_rate", "report_tat_ai_positive"):
        assert not any(key[:2] == (kpi, "1h") for key in last)
    assert ("score_psi", "1h", START + 10 * HOUR_MS, "S1", "ich", "1.0", "ICH") not in last
