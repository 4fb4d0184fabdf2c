"""The governance breach policy over final KPI values (DESIGN §5).

The policy is a versioned TOML file (``infra/policy/breach_policy.toml``)::

    version = 1

    [[rules]]
    id = "ppv-low"              # stable: part of every breach_id
    kpi = "alert_ppv"
    window = "30d"              # 1h, 1d, 7d, 30d
    comparator = "<"            # <, <=, >, >=
    threshold = 0.30
    min_denominator = 20        # fewer cases: no evidence either way
    severity = "WARNING"        # WARNING, CRITICAL
    open_after = 1              # consecutive breaching final windows to open
    resolve_after = 3           # consecutive healthy final windows to resolve
    scope = "site"              # which series (below)
    evidence = "interval"       # proportions: the Wilson bound must cross (below)
    confidence = 0.95           # of that one-sided bound

A threshold rule on a proportion can decide on evidence rather than on the point
estimate (``evidence = "interval"``): a window is breaching only when its one-sided
Wilson bound at ``confidence`` (default 0.95) is past the threshold (the lower bound
above it for ``>``/``>=``, the upper bound below it for ``<``/``<=``), healthy when its
value is not past it, and neutral in between, where the cases cannot tell. Against a
5 % failure limit, 2 failures of 39 are then no breach (one-sided 95 % lower bound
1.7 %), 5 of 39 are (6.4 %).
A drift rule on ``score_psi`` can require the shift to be significant for the sample
sizes at hand (``evidence = "significance"``): a window is breaching only when its PSI is
past the threshold *and* the p-value of its chi-square test of homogeneity against the
reference (``KpiValue.p_value``, see ``drift``) is below ``1 - confidence``; neutral when
the PSI is past the band but the scores cannot tell. PSI's bands come from samples of
thousands; on 140 scores a stable model crosses 0.25 in about 3 % of windows, the test at
``confidence = 0.999`` in 0.1 %.
With ``evidence = "value"`` (the default, and all a version 1 policy knows) the value
alone decides.

A rule of ``kind = "baseline"`` compares each window with the upper Wilson 95 % bound
of the series' own baseline instead of a fixed threshold: the pooled numerator and
denominator of its windows in the first ``baseline_days`` (default 60) days. That is
the **sustained-discordance rule** of the Mayo Clinic PE-detector monitoring (Sorin et
al., JACR 2025): daily discordance above the baseline's upper 95 % bound for 7
consecutive days is CRITICAL.

A rule of ``kind = "cusum"`` runs a Bernoulli CUSUM (``cusum``) on a daily proportion,
against the same baseline: it detects a rise of ``shift`` (absolute, 0.03 = 3 points;
a fall with ``comparator = "<"``, e.g. of specificity) with an in-control average run
length of ``arl0_days``; the control limit is derived from
both and the baseline (its proportion and labelled studies per day). A window is
breaching when the statistic reaches the limit, healthy otherwise; the breach's value is
the statistic, its threshold the limit, and its evidence the statistic's recent path.
``open_after`` is 1 for a CUSUM (the statistic already accumulates the evidence).

Series (``scope``): ``site`` (default) evaluates each site with algorithm version
``*``; ``site_version`` each site and version; ``version`` all sites per version;
``global`` all sites and versions; ``any`` every series. Every series is per algorithm
and finding.

Evaluation, per rule and series, on FINAL values in window order:

- a window is *breaching* if its denominator reaches ``min_denominator`` and its value
  (or ``statistic``: p50 / p90) satisfies the comparison; *healthy* if it reaches the
  denominator and does not; otherwise (too few cases, no value, baseline still being
  collected) it is *neutral*;
- ``open_after`` consecutive breaching windows open a breach, ``resolve_after``
  consecutive healthy windows resolve it (hysteresis); a neutral window or a gap in
  the window sequence (a missing window) restarts both counts;
- only the first final value of a window counts: later revisions and windows older
  than the last one evaluated are ignored (``ignored_values``), so breach history is
  append-only.

A breach keeps one ``breach_id`` from OPEN to RESOLVED: a hash of the rule, the series
and the window that opened it.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from statistics import NormalDist
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.records import Breach, BreachState, KpiValue, Severity
from schemas.units import DAY_MS, format_utc
from streams.core.kpi.catalogue import KPI_BY_NAME, KpiKind
from streams.core.kpi.cusum import BernoulliCusum
from streams.core.kpi.state_schema import BreachEvaluatorState, WindowState
from streams.core.kpi.stats import wilson_interval
from streams.core.kpi.windows import WINDOW_SPEC_BY_NAME

__all__ = [
    "BreachEvaluator",
    "BreachPolicy",
    "BreachRule",
    "Comparator",
    "Evidence",
    "RuleKind",
    "Scope",
    "breach_id",
    "cusum_trace",
]


class Comparator(StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="

    def holds(self, value: float, threshold: float) -> bool:
        """Returns whether ``value <comparator> threshold``."""
        if self is Comparator.LT:
            return value < threshold
        if self is Comparator.LE:
            return value <= threshold
        if self is Comparator.GT:
            return value > threshold
        return value >= threshold

    @property
    def below(self) -> bool:
        """Whether the comparator looks below the threshold (``<``, ``<=``): a fall."""
        return self in (Comparator.LT, Comparator.LE)


class RuleKind(StrEnum):
    THRESHOLD = "threshold"
    """Compare with a fixed ``threshold``."""
    BASELINE = "baseline"
    """Breaching when above the upper Wilson 95 % bound of the series' baseline."""
    CUSUM = "cusum"
    """Breaching when a Bernoulli CUSUM against the series' baseline reaches its limit."""


class Evidence(StrEnum):
    VALUE = "value"
    """The value (or statistic) alone decides."""
    INTERVAL = "interval"
    """The one-sided Wilson bound at ``confidence`` must cross the threshold."""
    SIGNIFICANCE = "significance"
    """Score drift: the chi-square test's p-value must be below ``1 - confidence``."""


class Scope(StrEnum):
    SITE = "site"
    SITE_VERSION = "site_version"
    VERSION = "version"
    GLOBAL = "global"
    ANY = "any"

    def matches(self, site_id: str, algorithm_version: str) -> bool:
        """Returns whether a series (its site and version) is evaluated under this scope."""
        site, version = site_id != "*", algorithm_version != "*"
        if self is Scope.SITE:
            return site and not version
        if self is Scope.SITE_VERSION:
            return site and version
        if self is Scope.VERSION:
            return not site and version
        if self is Scope.GLOBAL:
            return not site and not version
        return True


class BreachRule(BaseModel):
    """One rule of the policy (see the module docstring for the fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    kpi: str
    window: str
    severity: Severity
    kind: RuleKind = RuleKind.THRESHOLD
    comparator: Comparator = Comparator.GT
    threshold: float | None = None
    statistic: str = Field(default="value", pattern="^(value|p50|p90)$")
    min_denominator: float = Field(default=1.0, ge=0.0)
    open_after: int = Field(default=1, ge=1)
    resolve_after: int = Field(default=1, ge=1)
    scope: Scope = Scope.SITE
    baseline_days: int = Field(default=60, ge=1)
    min_baseline_denominator: float = Field(default=1.0, gt=0.0)
    evidence: Evidence = Evidence.VALUE
    confidence: float = Field(default=0.95, ge=0.5, lt=1.0)
    shift: float | None = Field(default=None, gt=0.0, lt=1.0)
    arl0_days: float | None = Field(default=None, gt=0.0)
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> BreachRule:
        spec = KPI_BY_NAME.get(self.kpi)
        if spec is None:
            raise ValueError(f"rule {self.id!r}: unknown KPI {self.kpi!r}")
        if self.window not in spec.window_sizes:
            raise ValueError(f"rule {self.id!r}: {self.kpi} has no {self.window!r} windows")
        if self.kind is RuleKind.THRESHOLD and self.threshold is None:
            raise ValueError(f"rule {self.id!r}: a threshold rule needs a threshold")
        if self.kind is not RuleKind.THRESHOLD and self.statistic != "value":
            raise ValueError(f"rule {self.id!r}: a {self.kind} rule compares the value")
        if self.kind is RuleKind.CUSUM:
            if spec.kind is not KpiKind.PROPORTION:
                raise ValueError(f"rule {self.id!r}: a CUSUM watches a proportion")
            if self.shift is None or self.arl0_days is None:
                raise ValueError(f"rule {self.id!r}: a CUSUM needs shift and arl0_days")
            if self.open_after != 1:
                raise ValueError(f"rule {self.id!r}: a CUSUM opens on its first signal")
            if self.window != "1d":
                raise ValueError(f"rule {self.id!r}: a CUSUM counts days: window = '1d'")
        elif self.shift is not None or self.arl0_days is not None:
            raise ValueError(f"rule {self.id!r}: shift and arl0_days are for CUSUM rules")
        if self.evidence is Evidence.SIGNIFICANCE and (
            self.kind is not RuleKind.THRESHOLD or spec.kind is not KpiKind.SCORE
        ):
            raise ValueError(
                f"rule {self.id!r}: evidence = 'significance' needs a threshold rule on"
                f" score drift, and {self.kpi} is not one"
            )
        if self.evidence is Evidence.INTERVAL and (
            self.kind is not RuleKind.THRESHOLD or spec.kind is not KpiKind.PROPORTION
        ):
            raise ValueError(
                f"rule {self.id!r}: evidence = 'interval' needs a threshold rule on a"
                f" proportion, and {self.kpi} is not one"
            )
        return self

    @property
    def z(self) -> float:
        """The standard normal quantile of ``confidence`` (one-sided)."""
        return NormalDist().inv_cdf(self.confidence)


class BreachPolicy(BaseModel):
    """A versioned set of breach rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    rules: tuple[BreachRule, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> BreachPolicy:
        ids = [rule.id for rule in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate rule ids in the breach policy: {sorted(ids)}")
        return self

    @classmethod
    def from_toml(cls, text: str) -> BreachPolicy:
        """Parses a policy from TOML text (the runtime reads the file).

        Raises:
            ValueError: if the text is not TOML or not a valid policy
                (``pydantic.ValidationError`` is a ``ValueError``).
        """
        try:
            data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"breach policy is not valid TOML: {exc}") from exc
        return cls.model_validate(data)


def breach_id(rule_id: str, dims: tuple[str, str, str, str], window: str, start_ms: int) -> str:
    """Returns the id of the breach a rule opened on a series at a window."""
    text = "|".join((rule_id, *dims, window, str(start_ms)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(slots=True)
class _Window:
    start_ms: int
    end_ms: int
    value: float
    numerator: float | None
    denominator: float | None
    p_value: float | None = None

    def describe(self) -> str:
        counts = ""
        if self.numerator is not None and self.denominator is not None:
            counts = f" ({self.numerator:g}/{self.denominator:g})"
        elif self.p_value is not None and self.denominator is not None:
            counts = f" (n={self.denominator:g}, p={self.p_value:.2g})"
        return f"[{format_utc(self.start_ms)}, {format_utc(self.end_ms)}) {self.value:.4g}{counts}"


@dataclass(slots=True)
class _Series:
    """Evaluation state of one rule on one series; bounded, whatever the stream length."""

    recent: deque[_Window]
    last_start_ms: int | None = None
    breaching: int = 0
    healthy: int = 0
    open_id: str | None = None
    baseline_start_ms: int | None = None
    baseline: list[float] = field(default_factory=lambda: [0.0, 0.0])
    bound: float | None = None
    chart: BernoulliCusum | None = None
    statistic: float = 0.0
    path: deque[_Window] = field(default_factory=lambda: deque(maxlen=_PATH_DAYS))


_PATH_DAYS = 14
"""Days of a CUSUM's path a breach's evidence shows."""


def _window_state(w: _Window) -> WindowState:
    return (w.start_ms, w.end_ms, w.value, w.numerator, w.denominator, w.p_value)


class BreachEvaluator:
    """Applies a breach policy to final KPI values; called with every batch of values.

    Args:
        policy: the rules to evaluate.
    """

    def __init__(self, policy: BreachPolicy) -> None:
        self.policy = policy
        self._rules: dict[tuple[str, str], list[BreachRule]] = {}
        for rule in policy.rules:
            self._rules.setdefault((rule.kpi, rule.window), []).append(rule)
        self._series: dict[tuple[str, str, str, str, str], _Series] = {}
        self.ignored_values = 0

    def open_breaches(self) -> dict[tuple[Severity, str], int]:
        """Breaches open now, counted by ``(severity, rule id)``."""
        rules = {rule.id: rule for rule in self.policy.rules}
        counts: dict[tuple[Severity, str], int] = {}
        for (rule_id, *_), series in self._series.items():
            if series.open_id is not None:
                key = (rules[rule_id].severity, rule_id)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def state(self) -> dict[str, object]:
        """The state of every series as plain data (``BreachEvaluatorState``), no policy."""
        return {
            "ignored_values": self.ignored_values,
            "series": [
                {
                    "rule": rule_id,
                    "dims": dims,
                    "recent": [_window_state(w) for w in series.recent],
                    "last_start_ms": series.last_start_ms,
                    "breaching": series.breaching,
                    "healthy": series.healthy,
                    "open_id": series.open_id,
                    "baseline_start_ms": series.baseline_start_ms,
                    "baseline": tuple(series.baseline),
                    "bound": series.bound,
                    "chart": None
                    if series.chart is None
                    else (series.chart.p0, series.chart.p1, series.chart.h),
                    "statistic": series.statistic,
                    "path": [_window_state(w) for w in series.path],
                }
                for (rule_id, *dims), series in self._series.items()
            ],
        }

    def load(self, state: BreachEvaluatorState) -> None:
        """Fills a new evaluator (built from the current policy) with stored state.

        The series of a rule the policy no longer has are left out; a rule new to the
        policy starts with no history.

        Raises:
            ValueError: the evaluator already holds series.
        """
        if self._series:
            raise ValueError("stored state is loaded into a new evaluator only")
        rules = {rule.id: rule for rule in self.policy.rules}
        self.ignored_values = state.ignored_values
        for stored in state.series:
            rule = rules.get(stored.rule)
            if rule is None:
                continue
            depth = max(rule.open_after, rule.resolve_after)
            chart = None if stored.chart is None else BernoulliCusum(*stored.chart)
            self._series[(stored.rule, *stored.dims)] = _Series(
                recent=deque((_Window(*w) for w in stored.recent), maxlen=depth),
                last_start_ms=stored.last_start_ms,
                breaching=stored.breaching,
                healthy=stored.healthy,
                open_id=stored.open_id,
                baseline_start_ms=stored.baseline_start_ms,
                baseline=list(stored.baseline),
                bound=stored.bound,
                chart=chart,
                statistic=stored.statistic,
                path=deque((_Window(*w) for w in stored.path), maxlen=_PATH_DAYS),
            )

    def apply(self, values: Iterable[KpiValue]) -> list[Breach]:
        """Evaluates KPI values (non-final ones are skipped); returns breaches opened or resolved.

        Values of one series must come in window order, as the aggregator emits them.
        """
        out: list[Breach] = []
        for v in values:
            if not v.final:
                continue
            rules = self._rules.get((v.kpi, v.window_size))
            if not rules:
                continue
            for rule in rules:
                if rule.scope.matches(v.site_id, v.algorithm_version):
                    breach = self._evaluate(rule, v)
                    if breach is not None:
                        out.append(breach)
        return out

    def _evaluate(self, rule: BreachRule, v: KpiValue) -> Breach | None:
        key = (rule.id, v.site_id, v.algorithm_name, v.algorithm_version, v.finding_code)
        series = self._series.get(key)
        if series is None:
            depth = max(rule.open_after, rule.resolve_after)
            series = self._series[key] = _Series(recent=deque(maxlen=depth))
        if v.revision > 1 or (
            series.last_start_ms is not None and v.window_start_ms <= series.last_start_ms
        ):
            self.ignored_values += 1
            return None
        step = WINDOW_SPEC_BY_NAME[rule.window].step_ms
        if series.last_start_ms is not None and v.window_start_ms != series.last_start_ms + step:
            series.breaching = series.healthy = 0  # a missing window breaks the sequence
            series.recent.clear()
        series.last_start_ms = v.window_start_ms
        verdict = self._verdict(rule, series, v)
        if verdict is None:
            series.breaching = series.healthy = 0
            series.recent.clear()
            return None
        value = getattr(v, rule.statistic)
        window = _Window(
            v.window_start_ms, v.window_end_ms, value, v.numerator, v.denominator, v.p_value
        )
        if verdict:
            if series.healthy:
                series.recent.clear()
            series.breaching += 1
            series.healthy = 0
        else:
            if series.breaching:
                series.recent.clear()
            series.healthy += 1
            series.breaching = 0
        series.recent.append(window)
        if verdict and series.open_id is None and series.breaching >= rule.open_after:
            dims = (v.site_id, v.algorithm_name, v.algorithm_version, v.finding_code)
            series.open_id = breach_id(rule.id, dims, rule.window, v.window_start_ms)
            return self._breach(rule, series, v, BreachState.OPEN, series.open_id)
        if not verdict and series.open_id is not None and series.healthy >= rule.resolve_after:
            opened, series.open_id = series.open_id, None
            return self._breach(rule, series, v, BreachState.RESOLVED, opened)
        return None

    def _verdict(self, rule: BreachRule, series: _Series, v: KpiValue) -> bool | None:
        """True: breaching, False: healthy, None: neutral (no evidence either way)."""
        if rule.kind is not RuleKind.THRESHOLD and not self._baseline_done(rule, series, v):
            return None
        value = getattr(v, rule.statistic)
        denominator = v.denominator or 0.0
        if value is None or denominator < rule.min_denominator:
            return None
        if rule.kind is RuleKind.BASELINE:
            return series.bound is not None and value > series.bound
        if rule.kind is RuleKind.CUSUM:
            return self._cusum(series, v)
        assert rule.threshold is not None
        if not rule.comparator.holds(value, rule.threshold):
            return False
        if rule.evidence is Evidence.INTERVAL:
            low, high = wilson_interval(v.numerator or 0.0, denominator, rule.z)
            bound = high if rule.comparator.below else low
            if not rule.comparator.holds(bound, rule.threshold):
                return None  # past the threshold, but not beyond doubt: no evidence
        elif rule.evidence is Evidence.SIGNIFICANCE and (
            v.p_value is None or v.p_value >= 1.0 - rule.confidence
        ):
            return None  # past the band, but the scores cannot tell
        return True

    @staticmethod
    def _cusum(series: _Series, v: KpiValue) -> bool | None:
        """Advances the series' CUSUM by a day; True when it reaches its limit."""
        chart = series.chart
        if chart is None or v.numerator is None or v.denominator is None:
            return None
        statistic = chart.step(series.statistic, v.numerator, v.denominator)
        series.statistic = min(statistic, chart.h)
        series.path.append(
            _Window(
                v.window_start_ms, v.window_end_ms, series.statistic, v.numerator, v.denominator
            )
        )
        return statistic >= chart.h

    def _baseline_done(self, rule: BreachRule, series: _Series, v: KpiValue) -> bool:
        """Accumulates the baseline; returns whether ``v`` lies after it."""
        if series.baseline_start_ms is None:
            series.baseline_start_ms = v.window_start_ms
        end = series.baseline_start_ms + rule.baseline_days * DAY_MS
        if v.window_start_ms < end:
            if v.numerator is not None and v.denominator:
                series.baseline[0] += v.numerator
                series.baseline[1] += v.denominator
            return False
        if series.bound is None and series.baseline[1] >= rule.min_baseline_denominator:
            events, trials = series.baseline
            series.bound = wilson_interval(events, trials)[1]
            if rule.kind is RuleKind.CUSUM:
                assert rule.shift is not None and rule.arl0_days is not None
                # (x + 1/2) / (n + 1): a baseline without a discordant case is not p0 = 0.
                p0 = (events + 0.5) / (trials + 1.0)
                per_day = trials / rule.baseline_days
                series.chart = BernoulliCusum.design(
                    p0, rule.shift, rule.arl0_days, per_day, falling=rule.comparator.below
                )
        return True

    def _breach(
        self, rule: BreachRule, series: _Series, v: KpiValue, state: BreachState, bid: str
    ) -> Breach:
        windows = list(series.recent)
        value = getattr(v, rule.statistic)
        baseline = ""
        if rule.kind is not RuleKind.THRESHOLD:
            assert series.baseline_start_ms is not None
            baseline_end = series.baseline_start_ms + rule.baseline_days * DAY_MS
            baseline = (
                f"its baseline [{format_utc(series.baseline_start_ms)}, "
                f"{format_utc(baseline_end)}) ({series.baseline[0]:g}/{series.baseline[1]:g})"
            )
        if rule.kind is RuleKind.CUSUM:
            return self._cusum_breach(rule, series, v, state, bid, baseline)
        if rule.kind is RuleKind.BASELINE:
            threshold = series.bound
            test = f"above {threshold:.4g}, the upper Wilson 95% bound of {baseline}"
        else:
            threshold = rule.threshold
            test = f"{rule.comparator.value} {threshold:g}"
            if rule.evidence is Evidence.INTERVAL:
                test += f" (its one-sided {rule.confidence:.0%} Wilson bound too)"
            elif rule.evidence is Evidence.SIGNIFICANCE:
                test += f" (and a chi-square p-value below {1.0 - rule.confidence:.2g})"
        stat = "" if rule.statistic == "value" else f" {rule.statistic}"
        if state is BreachState.OPEN:
            verb, count = "opened", rule.open_after
            condition = test
        else:
            verb, count = "resolved", rule.resolve_after
            condition = f"no longer {test}"
        evidence = (
            f"{verb}: {rule.kpi}{stat} over {rule.window} {condition} "
            f"(denominator >= {rule.min_denominator:g}) in {len(windows[-count:])} "
            f"consecutive final windows: "
            + "; ".join(w.describe() for w in windows[-count:])
            + f". Policy v{self.policy.version}, rule {rule.id}."
        )
        return self._record(rule, v, state, bid, value, threshold, evidence)

    def _cusum_breach(
        self,
        rule: BreachRule,
        series: _Series,
        v: KpiValue,
        state: BreachState,
        bid: str,
        baseline: str,
    ) -> Breach:
        chart = series.chart
        assert chart is not None
        verb = (
            "opened: reached"
            if state is BreachState.OPEN
            else f"resolved: below for {rule.resolve_after} days"
        )
        path = "; ".join(
            f"{format_utc(w.start_ms)[:10]} {w.numerator:g}/{w.denominator:g} -> {w.value:.3g}"
            for w in series.path
        )
        evidence = (
            f"{verb} the limit h = {chart.h:.3g} of a Bernoulli CUSUM on {rule.kpi} per day: "
            f"in control p0 = {chart.p0:.4g} from {baseline}, shifted p1 = {chart.p1:.4g} "
            f"({chart.p1 - chart.p0:+.4g}), in-control ARL {rule.arl0_days:g} days. "
            f"Statistic now {series.statistic:.3g}; path (day, cases, statistic): {path}. "
            f"Policy v{self.policy.version}, rule {rule.id}."
        )
        return self._record(rule, v, state, bid, series.statistic, chart.h, evidence)

    def _record(
        self,
        rule: BreachRule,
        v: KpiValue,
        state: BreachState,
        bid: str,
        value: float | None,
        threshold: float | None,
        evidence: str,
    ) -> Breach:
        return Breach(
            breach_id=bid,
            rule_id=rule.id,
            kpi=rule.kpi,
            severity=rule.severity,
            state=state,
            window_size=rule.window,
            window_start_ms=v.window_start_ms,
            window_end_ms=v.window_end_ms,
            site_id=v.site_id,
            algorithm_name=v.algorithm_name,
            algorithm_version=v.algorithm_version,
            finding_code=v.finding_code,
            value=value,
            threshold=threshold,
            evidence=evidence,
        )


def cusum_trace(rule: BreachRule, values: Iterable[KpiValue]) -> list[tuple[int, float, float]]:
    """Returns the path of a CUSUM rule over one series, for charts.

    Args:
        rule: a ``kind = "cusum"`` rule.
        values: the final values of one series of the rule's KPI and window, in window
            order (the ones the evaluator would see).

    Returns:
        ``(window_start_ms, statistic, limit)`` for every day after the baseline, the
        statistic as the evaluator holds it (capped at the limit).
    """
    if rule.kind is not RuleKind.CUSUM:
        raise ValueError(f"rule {rule.id!r} is not a CUSUM")
    evaluator = BreachEvaluator(BreachPolicy(version=1, rules=(rule,)))
    trace: list[tuple[int, float, float]] = []
    for v in values:
        evaluator.apply([v])
        key = (rule.id, v.site_id, v.algorithm_name, v.algorithm_version, v.finding_code)
        series = evaluator._series.get(key)
        if series is None or series.chart is None or not series.path:
            continue
        if series.path[-1].start_ms == v.window_start_ms:
            trace.append((v.window_start_ms, series.statistic, series.chart.h))
    return trace
