"""Breach policy: parsing, hysteresis, the sustained-discordance rule, drift, the CUSUM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from schemas.records import BreachState, KpiValue, Severity
from schemas.units import DAY_MS, MINUTE_MS
from streams.core.kpi.breach import (
    BreachEvaluator,
    BreachPolicy,
    BreachRule,
    Scope,
    breach_id,
    cusum_trace,
)
from streams.core.kpi.cusum import BernoulliCusum, control_limit
from streams.core.kpi.stats import wilson_interval

START = 1_735_689_600_000  # 2025-01-01T00:00:00Z
POLICY_FILE = Path(__file__).resolve().parents[4] / "infra" / "policy" / "breach_policy.toml"


def value(
    day: int,
    v: float | None,
    *,
    kpi: str = "alert_ppv",
    window: str = "1d",
    num: float | None = None,
    den: float | None = 50.0,
    site: str = "S1",
    version: str = "*",
    final: bool = True,
    revision: int = 1,
    p90: float | None = None,
    p_value: float | None = None,
) -> KpiValue:
    size = {"1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}[window]
    return KpiValue(
        kpi=kpi,
        window_size=window,
        window_start_ms=START + day * DAY_MS,
        window_end_ms=START + day * DAY_MS + size,
        site_id=site,
        algorithm_name="pe-detect",
        algorithm_version=version,
        finding_code="PE",
        numerator=num if num is not None else (None if v is None or den is None else v * den),
        denominator=den,
        value=v,
        p90=p90,
        p_value=p_value,
        final=final,
        revision=revision,
    )


def policy(**rule: object) -> BreachPolicy:
    fields: dict[str, object] = {
        "id": "r",
        "kpi": "alert_ppv",
        "window": "1d",
        "comparator": "<",
        "threshold": 0.3,
        "severity": "WARNING",
    }
    fields.update(rule)
    return BreachPolicy(version=3, rules=(BreachRule.model_validate(fields),))


def test_the_default_policy_file_parses() -> None:
    parsed = BreachPolicy.from_toml(POLICY_FILE.read_text())
    assert parsed.version == 3
    rules = {r.id: r for r in parsed.rules}
    discordance = rules["sustained-discordance"]
    assert (discordance.kpi, discordance.window, discordance.severity) == (
        "discordance_rate",
        "1d",
        Severity.CRITICAL,
    )
    assert (discordance.open_after, discordance.baseline_days) == (7, 60)
    assert rules["alert-ppv-low"].threshold == 0.30
    assert rules["score-drift-major"].severity is Severity.CRITICAL
    assert all(r.scope is Scope.SITE for r in parsed.rules)
    on_evidence = {r.id for r in parsed.rules if r.evidence.value == "interval"}
    assert on_evidence == {
        "alert-ppv-low",
        "inference-failures-high",
        "coverage-low",
        "alert-response-low",
    }
    significant = {r.id for r in parsed.rules if r.evidence.value == "significance"}
    assert significant == {"score-drift-moderate", "score-drift-major"}
    cusum = rules["discordance-cusum"]
    assert (cusum.kind.value, cusum.kpi, cusum.shift, cusum.arl0_days) == (
        "cusum",
        "discordance_rate",
        0.03,
        2190,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version = 1\n[[rules]]\nid='a'\nkpi='nope'\nwindow='1d'\nthreshold=1\n"
            "severity='WARNING'",
            "unknown KPI",
        ),
        (
            "version = 1\n[[rules]]\nid='a'\nkpi='score_psi'\nwindow='1h'\nthreshold=1\n"
            "severity='WARNING'",
            "no '1h' windows",
        ),
        (
            "version = 1\n[[rules]]\nid='a'\nkpi='alert_ppv'\nwindow='1d'\nseverity='WARNING'",
            "needs a threshold",
        ),
        (
            "version = 1\n" + "[[rules]]\nid='a'\nkpi='alert_ppv'\nwindow='1d'\nthreshold=1\n"
            "severity='WARNING'\n" * 2,
            "duplicate",
        ),
        ("version = [", "not valid TOML"),
        ("rules = []", "version"),
    ],
)
def test_invalid_policies_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreachPolicy.from_toml(text)


def run(evaluator: BreachEvaluator, values: list[KpiValue]) -> list:
    out = []
    for v in values:
        out += evaluator.apply([v])
    return out


def test_hysteresis_open_after_n_resolve_after_m() -> None:
    evaluator = BreachEvaluator(policy(open_after=3, resolve_after=2))
    series = [0.1, 0.2, 0.5, 0.1, 0.1, 0.2, 0.25, 0.9, 0.1, 0.8, 0.8]
    breaches = {}
    for day, v in enumerate(series):
        for b in evaluator.apply([value(day, v)]):
            breaches[day] = b
    # Days 0-1 breach, day 2 healthy resets; days 3-5 are three in a row: opens on day 5.
    assert sorted(breaches) == [5, 10]
    opened, resolved = breaches[5], breaches[10]
    assert opened.state is BreachState.OPEN and resolved.state is BreachState.RESOLVED
    assert opened.breach_id == resolved.breach_id
    assert opened.breach_id == breach_id(
        "r", ("S1", "pe-detect", "*", "PE"), "1d", START + 5 * DAY_MS
    )
    assert opened.window_start_ms == START + 5 * DAY_MS and opened.value == 0.2
    assert opened.threshold == 0.3 and opened.severity is Severity.WARNING
    assert "3 consecutive" in opened.evidence and "2025-01-04T00:00Z" in opened.evidence
    assert "Policy v3, rule r" in opened.evidence
    # Day 8 (healthy) was followed by a breaching day: only days 9-10 resolve it.
    assert "2025-01-10T00:00Z" in resolved.evidence and "2025-01-11T00:00Z" in resolved.evidence


def test_neutral_windows_and_gaps_restart_the_count() -> None:
    evaluator = BreachEvaluator(policy(open_after=2, min_denominator=20))
    values = [
        value(0, 0.1),
        value(1, 0.1, den=5),  # too few cases: no evidence either way
        value(2, 0.1),
        value(4, 0.1),  # day 3 is missing
        value(5, 0.1),  # second consecutive: opens
    ]
    out = run(evaluator, values)
    assert [b.window_start_ms for b in out] == [START + 5 * DAY_MS]


def test_only_first_final_values_in_order_count() -> None:
    evaluator = BreachEvaluator(policy(open_after=2))
    out = run(
        evaluator,
        [
            value(0, 0.1, final=False),
            value(0, 0.1),
            value(0, 0.9, revision=2),  # a revision: ignored
            value(0, 0.1),  # a repeat: ignored
            value(1, 0.1),
        ],
    )
    assert len(out) == 1 and out[0].window_start_ms == START + DAY_MS
    assert evaluator.ignored_values == 2


def test_scope_selects_the_series() -> None:
    evaluator = BreachEvaluator(policy())
    assert run(evaluator, [value(0, 0.1, site="*"), value(0, 0.1, version="1.0")]) == []
    assert len(run(evaluator, [value(0, 0.1)])) == 1
    rolled = BreachEvaluator(policy(scope="global"))
    assert len(run(rolled, [value(0, 0.1), value(0, 0.1, site="*")])) == 1


def test_duration_rule_on_p90() -> None:
    evaluator = BreachEvaluator(
        policy(kpi="time_to_result", comparator=">", threshold=900_000, statistic="p90")
    )
    out = run(evaluator, [value(0, MINUTE_MS, kpi="time_to_result", p90=1_000_000.0)])
    assert out[0].value == 1_000_000.0 and "p90" in out[0].evidence


def _discordance_days(rates: list[float], per_day: float = 100.0) -> list[KpiValue]:
    return [
        value(day, r, kpi="discordance_rate", num=r * per_day, den=per_day)
        for day, r in enumerate(rates)
    ]


@pytest.fixture
def discordance() -> BreachPolicy:
    """The shipped policy without its CUSUM (tested on its own below)."""
    shipped = BreachPolicy.from_toml(POLICY_FILE.read_text())
    rules = tuple(r for r in shipped.rules if r.id != "discordance-cusum")
    return shipped.model_copy(update={"rules": rules})


def test_sustained_discordance_fires_on_day_7_not_6(discordance: BreachPolicy) -> None:
    baseline = [0.04, 0.06] * 30  # 60 days at 5 %: upper bound ~5.6 %
    bound = wilson_interval(300, 6000)[1]
    evaluator = BreachEvaluator(discordance)
    assert run(evaluator, _discordance_days(baseline)) == []
    excursion = _discordance_days(baseline + [0.10] * 7)[60:]
    out = []
    for day, v in enumerate(excursion, start=1):
        fired = evaluator.apply([v])
        if day < 7:
            assert fired == [], day
        out += fired
    assert len(out) == 1
    breach = out[0]
    assert breach.rule_id == "sustained-discordance" and breach.severity is Severity.CRITICAL
    assert breach.state is BreachState.OPEN
    assert breach.window_start_ms == START + 66 * DAY_MS
    assert breach.threshold == pytest.approx(bound)
    assert f"{bound:.4g}" in breach.evidence and "(300/6000)" in breach.evidence
    assert "7 consecutive" in breach.evidence and "2025-03-02T00:00Z" in breach.evidence


def test_six_day_excursions_never_fire(discordance: BreachPolicy) -> None:
    rates = [0.05] * 60 + ([0.10] * 6 + [0.05]) * 5
    assert run(BreachEvaluator(discordance), _discordance_days(rates)) == []


def test_sustained_discordance_resolves_after_seven_normal_days(discordance: BreachPolicy) -> None:
    rates = [0.05] * 60 + [0.12] * 10 + [0.05] * 6
    evaluator = BreachEvaluator(discordance)
    out = run(evaluator, _discordance_days(rates))
    assert [b.state for b in out] == [BreachState.OPEN]
    out = run(evaluator, _discordance_days([*rates, 0.05])[-1:])
    assert [b.state for b in out] == [BreachState.RESOLVED]


def _psi(day: int, psi: float, p_value: float | None, n: float = 500) -> KpiValue:
    psi_value = value(day, psi, kpi="score_psi", window="7d", den=n, p_value=p_value)
    return psi_value.model_copy(update={"numerator": None})  # as the aggregator emits it


def test_psi_bands_need_a_significant_shift(discordance: BreachPolicy) -> None:
    evaluator = BreachEvaluator(discordance)
    moderate = [_psi(d, 0.15, 1e-5) for d in range(3)]
    out = run(evaluator, moderate)
    assert [(b.rule_id, b.severity) for b in out] == [("score-drift-moderate", Severity.WARNING)]
    assert "(n=500, p=1e-05)" in out[0].evidence
    assert "chi-square p-value below 0.001" in out[0].evidence
    major = [_psi(d, 0.4, 1e-6) for d in range(3, 6)]
    out = run(evaluator, major)
    assert [(b.rule_id, b.severity) for b in out] == [("score-drift-major", Severity.CRITICAL)]


def test_psi_past_the_band_on_too_few_scores_to_tell_is_no_breach(
    discordance: BreachPolicy,
) -> None:
    # The demo's false alarm: PSI 0.5 on 140 scores that a stable model produces.
    noisy = [_psi(d, 0.5, p) for d, p in enumerate([0.2, 0.0011, 0.04, None, 0.3, 0.5])]
    assert run(BreachEvaluator(discordance), noisy) == []
    # One significant window between neutral ones does not open (open_after = 2).
    edge = [_psi(d, 0.5, p) for d, p in enumerate([0.0015, 0.0009, 0.2, 0.0009])]
    assert run(BreachEvaluator(discordance), edge) == []


def test_significance_needs_a_threshold_rule_on_score_drift() -> None:
    with pytest.raises(ValueError, match="significance"):
        policy(evidence="significance")
    rule = policy(
        kpi="score_psi",
        window="7d",
        comparator=">",
        threshold=0.1,
        evidence="significance",
        confidence=0.999,
    ).rules[0]
    assert rule.evidence.value == "significance"


def test_evaluation_is_deterministic(discordance: BreachPolicy) -> None:
    rates = [0.05] * 60 + [0.12] * 10
    first = run(BreachEvaluator(discordance), _discordance_days(rates))
    second = run(BreachEvaluator(discordance), _discordance_days(rates))
    assert first == second and first


# --- evidence = "interval": the Wilson bound must cross --------------------------------


def failures(**rule: object) -> BreachEvaluator:
    return BreachEvaluator(
        policy(
            kpi="inference_failure_rate",
            comparator=">",
            threshold=0.05,
            min_denominator=20,
            evidence="interval",
            **rule,
        )
    )


def test_interval_evidence_by_hand() -> None:
    """One-sided 95% Wilson lower bound (z = 1.6449) of k failures of 39, against 5%:
    2/39 -> 1.71% (value 5.1% is past the limit, the bound is not: neutral);
    5/39 -> 6.38% (breaching); 1/39 -> value 2.6% (healthy)."""
    z = 1.6448536269514722
    assert wilson_interval(2, 39, z)[0] == pytest.approx(0.017118, abs=1e-6)
    assert wilson_interval(5, 39, z)[0] == pytest.approx(0.063823, abs=1e-6)
    evaluator = failures()
    verdicts = [
        verdict(evaluator, value(d, k / 39, kpi="inference_failure_rate", num=k, den=39))
        for d, k in enumerate((2, 5, 1))
    ]
    assert verdicts == [None, True, False]


def verdict(evaluator: BreachEvaluator, v: KpiValue) -> bool | None:
    """The evaluator's verdict on one window of a fresh series (its only rule)."""
    from collections import deque

    from streams.core.kpi.breach import _Series

    return evaluator._verdict(evaluator.policy.rules[0], _Series(recent=deque(maxlen=2)), v)


def test_interval_evidence_stays_quiet_on_noise_and_opens_on_a_real_excess() -> None:
    evaluator = failures(open_after=2, resolve_after=2)
    noise = [value(d, 2 / 39, kpi="inference_failure_rate", num=2, den=39) for d in range(5)]
    assert evaluator.apply(noise) == []
    excess = [value(d, 6 / 39, kpi="inference_failure_rate", num=6, den=39) for d in range(5, 7)]
    opened = evaluator.apply(excess)
    assert [b.state for b in opened] == [BreachState.OPEN]
    assert "one-sided 95% Wilson bound too" in opened[0].evidence
    # The same stream judged on the value alone opens on the noise already.
    by_value = BreachEvaluator(
        policy(
            kpi="inference_failure_rate", comparator=">", threshold=0.05,
            min_denominator=20, open_after=2,
        )
    )  # fmt: skip
    assert [b.state for b in by_value.apply(noise)] == [BreachState.OPEN]


def test_interval_upper_bound_for_a_lower_limit() -> None:
    """PPV below 0.3: breaching only when the upper bound is below it too."""
    evaluator = BreachEvaluator(policy(evidence="interval", min_denominator=20))
    # 5/25 = 0.20 < 0.3 but the upper bound 0.36 is not; 2/40: upper bound 0.14;
    # 20/40 = 0.5 is not below the limit at all.
    assert verdict(evaluator, value(0, 5 / 25, num=5, den=25)) is None
    assert verdict(evaluator, value(0, 2 / 40, num=2, den=40)) is True
    assert verdict(evaluator, value(0, 20 / 40, num=20, den=40)) is False


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kpi": "time_to_result", "statistic": "p90", "threshold": 60_000}, "proportion"),
        ({"kind": "baseline", "kpi": "discordance_rate"}, "threshold rule"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_interval_evidence_needs_a_proportion_threshold_rule(
    rule: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        policy(evidence="interval", **rule)


def test_version_1_policy_files_keep_loading_and_judge_on_the_value() -> None:
    text = """version = 1
[[rules]]
id = "old"
kpi = "inference_failure_rate"
window = "1d"
comparator = ">"
threshold = 0.05
severity = "WARNING"
"""
    rule = BreachPolicy.from_toml(text).rules[0]
    assert rule.evidence.value == "value"


# --- kind = "cusum": a Bernoulli CUSUM against the baseline -----------------------------


def _cusum_policy() -> BreachPolicy:
    shipped = BreachPolicy.from_toml(POLICY_FILE.read_text())
    return shipped.model_copy(
        update={"rules": tuple(r for r in shipped.rules if r.id == "discordance-cusum")}
    )


def test_cusum_opens_when_the_statistic_reaches_the_derived_limit() -> None:
    evaluator = BreachEvaluator(_cusum_policy())
    baseline = [3.0] * 60  # 3 of 100 a day for 60 days: p0 = 180.5 / 6001
    shifted = [9.0, 7.0, 2.0, 8.0, 9.0, 6.0, 9.0, 8.0]
    days = [
        value(d, x / 100, kpi="discordance_rate", num=x, den=100.0)
        for d, x in enumerate(baseline + shifted)
    ]
    p0 = 180.5 / 6001
    chart = BernoulliCusum.design(p0, 0.03, 2190, 100.0)
    assert chart.h == pytest.approx(control_limit(p0, p0 + 0.03, 2190 * 100))
    up, down = math.log(chart.p1 / p0), math.log((1 - chart.p1) / (1 - p0))
    statistic, opening_day = 0.0, None
    for day, x in enumerate(shifted, start=60):  # by hand
        statistic = max(0.0, statistic + x * up + (100 - x) * down)
        if statistic >= chart.h:
            opening_day = day
            break
    assert opening_day is not None and opening_day < 60 + len(shifted)
    out = run(evaluator, days[:opening_day])
    assert out == []
    out = run(evaluator, days[opening_day:])
    assert [(b.rule_id, b.state, b.severity) for b in out] == [
        ("discordance-cusum", BreachState.OPEN, Severity.CRITICAL)
    ]
    breach = out[0]
    assert breach.window_start_ms == START + opening_day * DAY_MS
    assert breach.threshold == pytest.approx(chart.h) and breach.value == pytest.approx(chart.h)
    assert f"p0 = {p0:.4g}" in breach.evidence and "(180/6000)" in breach.evidence
    assert f"2025-03-0{opening_day - 58} 9/100 -> " in breach.evidence  # the path, by day


def test_cusum_resolves_after_the_shift_goes_away_and_stays_quiet_on_baseline_noise() -> None:
    evaluator = BreachEvaluator(_cusum_policy())
    rates = [3.0] * 60 + [12.0] * 3 + [3.0] * 30
    days = [
        value(d, x / 100, kpi="discordance_rate", num=x, den=100.0) for d, x in enumerate(rates)
    ]
    out = run(evaluator, days)
    assert [b.state for b in out] == [BreachState.OPEN, BreachState.RESOLVED]
    # The statistic is capped at h: it is below h again within days of the shift ending.
    opened, resolved = out
    assert (resolved.window_start_ms - opened.window_start_ms) // DAY_MS <= 7 + 3
    assert "below for 7 days" in resolved.evidence
    noise = [3.0, 5.0, 1.0, 4.0, 2.0, 6.0, 0.0, 3.0] * 20
    quiet = [
        value(d, x / 100, kpi="discordance_rate", num=x, den=100.0)
        for d, x in enumerate([3.0] * 60 + noise)
    ]
    assert run(BreachEvaluator(_cusum_policy()), quiet) == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "cusum", "kpi": "discordance_rate", "arl0_days": 365}, "shift and arl0_days"),
        (
            {"kind": "cusum", "kpi": "score_psi", "window": "7d", "shift": 0.03, "arl0_days": 365},
            "proportion",
        ),
        (
            {
                "kind": "cusum",
                "kpi": "discordance_rate",
                "shift": 0.03,
                "arl0_days": 365,
                "open_after": 2,
            },
            "first signal",
        ),
        (
            {
                "kind": "cusum",
                "kpi": "discordance_rate",
                "window": "7d",
                "shift": 0.03,
                "arl0_days": 365,
            },
            "window = '1d'",
        ),
        ({"shift": 0.03}, "for CUSUM rules"),
    ],
)
def test_invalid_cusum_rules_are_refused(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**rule)


def test_the_cusum_trace_is_the_statistic_the_evaluator_holds() -> None:
    rule = _cusum_policy().rules[0]
    rates = [3.0] * 60 + [12.0] * 3 + [3.0] * 10
    days = [
        value(d, x / 100, kpi="discordance_rate", num=x, den=100.0) for d, x in enumerate(rates)
    ]
    trace = cusum_trace(rule, days)
    assert [start for start, _, _ in trace] == [START + d * DAY_MS for d in range(60, 73)]
    limit = trace[0][2]
    statistics = [statistic for _, statistic, _ in trace]
    assert statistics[2] == limit  # reached on the third shifted day, capped there
    assert all(0.0 <= s <= limit for s in statistics) and statistics[-1] < limit
    with pytest.raises(ValueError, match="not a CUSUM"):
        cusum_trace(policy().rules[0], days)


def test_a_falling_cusum_watches_specificity() -> None:
    rule = {
        "kind": "cusum",
        "kpi": "specificity",
        "comparator": "<",
        "shift": 0.03,
        "arl0_days": 1095,
        "baseline_days": 60,
        "min_baseline_denominator": 300,
    }
    evaluator = BreachEvaluator(policy(**rule))
    tn = [98.0] * 60 + [99.0, 97.0, 90.0, 91.0, 89.0, 92.0]
    days = [value(d, x / 100, kpi="specificity", num=x, den=100.0) for d, x in enumerate(tn)]
    chart = BernoulliCusum.design(5880.5 / 6001, 0.03, 1095, 100.0, falling=True)
    statistic, opening_day = 0.0, None
    for day, x in enumerate(tn[60:], start=60):  # by hand
        statistic = chart.step(statistic, x, 100.0)
        if statistic >= chart.h:
            opening_day = day
            break
    out = run(evaluator, days)
    assert opening_day is not None
    assert [(b.state, b.window_start_ms) for b in out] == [
        (BreachState.OPEN, START + opening_day * DAY_MS)
    ]
    assert "(-0.03)" in out[0].evidence and out[0].threshold == pytest.approx(chart.h)


def test_open_breaches_counts_the_series_open_now_by_severity_and_rule() -> None:
    evaluator = BreachEvaluator(policy(severity="CRITICAL"))
    assert evaluator.open_breaches() == {}
    evaluator.apply([value(0, 0.1), value(0, 0.1, site="S2")])
    assert evaluator.open_breaches() == {(Severity.CRITICAL, "r"): 2}
    evaluator.apply([value(1, 0.9)])  # S1 resolves; S2 stays open
    assert evaluator.open_breaches() == {(Severity.CRITICAL, "r"): 1}
