"""The KPI catalogue and the contribution of one lineage record to it (DESIGN §5).

Every KPI is a function of lineage records, so the aggregator never looks at a record
twice: :class:`ContributionBuilder` turns a record into plain tuples once, and a new
revision of a record is applied as "subtract the contribution of the old revision, add
the contribution of the new one" (the KTable adder/subtractor pattern). Because the
contribution is a pure function of the record, the streamed values equal a batch
recomputation over the final lineage table.

A contribution is ``(dims, slots)``: ``dims`` = (site_id, algorithm_name,
algorithm_version or ``NO_VERSION``, finding_code) and ``slots`` a dict from the index
``i`` of a KPI in ``KPIS`` to the record's contribution to it, ``(event_time_ms, x, y)``
(absent when the record does not count for that KPI):

- proportions and counts: ``x`` = numerator delta, ``y`` = denominator delta;
- durations: ``x`` = log-bucket key of the duration (``stats.bucket_key``), ``y`` = 1;
- score histogram: ``x`` = score bin 0-9, ``y`` = 1.

Event times (the "event time" column of DESIGN §5):

- *report final*: ``report_final_at_ms``; a record without one contributes nothing to
  the report KPIs.
- *inference*: ``inference_completed_at_ms``, else ``study_available_at_ms`` (a failed
  run may not report a completion time); neither: nothing to the inference KPIs.
- *alert raised*: ``alert_raised_at_ms``.

Definitions beyond the table, chosen here:

- coverage counts every row with a final report (the join creates NO_AI_RESULT rows for
  eligible studies without inference); numerator: outcome is not NO_AI_RESULT. Rows of
  no inference have no algorithm version, so coverage exists only for version ``*``.
- "labelled" (discordance) = TP + FP + FN + TN: AI result and report label both
  POSITIVE/NEGATIVE vs PRESENT/ABSENT.
- review_candidates: value = the count of review candidates; denominator = AI-positive
  labelled rows (TP + FP), the population candidates are drawn from.
- time_to_result, ai_positive_rate and the score histogram count SUCCEEDED inferences;
  inference_failure_rate counts every inference.
- alert_response_rate: answered in time = ``time_to_response_ms <= response_sla_ms``;
  dismiss_rate = dismissed / alerts with a response.
- report_tat_ai_positive / _negative: ``report_tat_ms`` by AI result POSITIVE / NEGATIVE.
- addendum_rate: rows whose final report got an addendum / rows with a final report;
  ``_concordant`` restricts both to TP + TN, ``_discordant`` to FP + FN.
- durations (time_to_result, time_to_alert, time_to_response, report turnaround): p50
  and p90 by *nearest rank*, the smallest duration such that at least 50% (90%) of the
  window's durations are at or below it (rank ``ceil(p * n)`` of ``n``), given within
  1% (the log-bucket representative, ``stats.quantiles``); ``value`` is the p50 and
  ``denominator`` the number of durations. A p90 of 15 minutes therefore means that at
  least 90% of the studies took 15 minutes or less, however few they were.
- score_psi: ``value`` is the PSI of the window's score histogram against the series'
  reference, ``denominator`` the window's number of scores and ``p_value`` the chi-square
  test of homogeneity of the two histograms (``drift``); ``p_value`` is null for every
  other KPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from schemas.events import InferenceResult, InferenceStatus
from schemas.records import KpiValue, LineageRecord, Outcome
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.drift import score_bin
from streams.core.kpi.stats import bucket_key, quantiles, wilson_interval
from streams.core.kpi.windows import WINDOW_SPECS

__all__ = [
    "KPIS",
    "KPI_BY_NAME",
    "NO_VERSION",
    "ContributionBuilder",
    "Dims",
    "EventClock",
    "Item",
    "KpiKind",
    "KpiSpec",
    "RecordContribution",
    "Summary",
    "kpi_value",
    "summarise_counts",
    "summarise_durations",
]

NO_VERSION = ""
"""``dims`` version of a record without algorithm version (rolled up into ``*`` only)."""

Dims = tuple[str, str, str, str]
"""(site_id, algorithm_name, algorithm_version, finding_code)."""

Item = tuple[int, int, int]
"""(event_time_ms, x, y): see the module docstring."""

RecordContribution = tuple[Dims, dict[int, Item]]

Summary = tuple[
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
]
"""(numerator, denominator, value, ci_low, ci_high, p50, p90, p_value) of one window."""


class KpiKind(IntEnum):
    """How a KPI's contributions are aggregated."""

    PROPORTION = 0
    """Numerator / denominator with a Wilson interval."""
    COUNT = 1
    """A count (numerator), with the population it is drawn from as denominator."""
    DURATION = 2
    """p50 / p90 of log-bucketed durations."""
    SCORE = 3
    """10-bin score histogram, reported as PSI against a reference (``drift``)."""


class EventClock(StrEnum):
    """Which event time places a record's contribution in a window."""

    REPORT_FINAL = "report_final"
    INFERENCE = "inference"
    ALERT_RAISED = "alert_raised"


@dataclass(frozen=True, slots=True)
class KpiSpec:
    """One KPI of the catalogue.

    Attributes:
        name: the ``kpi`` of emitted values.
        kind: how contributions aggregate.
        clock: the event time that places a contribution.
        scale: factor applied to value and interval (100: "per 100").
        versioned: False when values exist only for algorithm version ``*``.
        window_sizes: window names the KPI is emitted for.
    """

    name: str
    kind: KpiKind
    clock: EventClock
    scale: float = 1.0
    versioned: bool = True
    window_sizes: tuple[str, ...] = ("1d", "7d", "30d")


_HOURLY = ("1h", "1d", "7d", "30d")
"""The window sizes of operational KPIs: an hour of inference failures, result times or
alert responses is enough to act on. The clinical signal (PPV, sensitivity, specificity,
discordance) and the workflow KPIs keep 1 d and longer: an hour holds one or two studies
of a service, and a proportion of two is noise (57% of all values of a year's replay
were such hours)."""

_P, _C, _D, _S = KpiKind.PROPORTION, KpiKind.COUNT, KpiKind.DURATION, KpiKind.SCORE
_REPORT, _INF, _ALERT = EventClock.REPORT_FINAL, EventClock.INFERENCE, EventClock.ALERT_RAISED

KPIS: tuple[KpiSpec, ...] = (
    KpiSpec("coverage", _P, _REPORT, versioned=False),
    KpiSpec("inference_failure_rate", _P, _INF, window_sizes=_HOURLY),
    KpiSpec("time_to_result", _D, _INF, window_sizes=_HOURLY),
    KpiSpec("ai_positive_rate", _P, _INF, scale=100.0),
    KpiSpec("alert_ppv", _P, _REPORT),
    KpiSpec("sensitivity", _P, _REPORT),
    KpiSpec("specificity", _P, _REPORT),
    KpiSpec("discordance_rate", _P, _REPORT),
    KpiSpec("review_candidates", _C, _REPORT),
    KpiSpec("alert_response_rate", _P, _ALERT, window_sizes=_HOURLY),
    KpiSpec("time_to_response", _D, _ALERT, window_sizes=_HOURLY),
    KpiSpec("dismiss_rate", _P, _ALERT),
    KpiSpec("escalation_rate", _P, _ALERT),
    KpiSpec("report_tat_ai_positive", _D, _REPORT),
    KpiSpec("report_tat_ai_negative", _D, _REPORT),
    KpiSpec("addendum_rate", _P, _REPORT),
    KpiSpec("addendum_rate_concordant", _P, _REPORT),
    KpiSpec("addendum_rate_discordant", _P, _REPORT),
    KpiSpec("score_psi", _S, _INF),
)
"""The catalogue; a KPI's index in this tuple is its slot in a contribution."""

KPI_BY_NAME: dict[str, KpiSpec] = {spec.name: spec for spec in KPIS}

(
    _COVERAGE,
    _FAILURE,
    _TTR,
    _POSITIVE,
    _PPV,
    _SENS,
    _SPEC,
    _DISCORD,
    _REVIEW,
    _RESPONSE,
    _TTRESP,
    _DISMISS,
    _ESCALATE,
    _TAT_POS,
    _TAT_NEG,
    _ADDENDUM,
    _ADD_CONC,
    _ADD_DISC,
    _PSI,
) = range(len(KPIS))

_TP, _FP = Outcome.TRUE_POSITIVE, Outcome.FALSE_POSITIVE
_FN, _TN = Outcome.FALSE_NEGATIVE, Outcome.TRUE_NEGATIVE
_SUCCEEDED = InferenceStatus.SUCCEEDED
_POS, _NEG = InferenceResult.POSITIVE, InferenceResult.NEGATIVE


class ContributionBuilder:
    """Computes the contribution of a lineage record; called twice per revision.

    Args:
        config: KPI options (response SLA, duration bucket gamma).
    """

    __slots__ = ("_inv_ln_gamma", "_sla_ms")

    def __init__(self, config: KpiConfig) -> None:
        self._sla_ms = config.response_sla_ms
        self._inv_ln_gamma = config.inv_ln_gamma

    def __call__(self, r: LineageRecord) -> RecordContribution:
        """Returns ``(dims, slots)`` of a record (see the module docstring)."""
        slots: dict[int, Item] = {}
        inv = self._inv_ln_gamma

        status = r.inference_status
        if status is not None:
            t = r.inference_completed_at_ms
            if t is None:
                t = r.study_available_at_ms
            if t is not None:
                if status == _SUCCEEDED:
                    slots[_FAILURE] = (t, 0, 1)
                    slots[_POSITIVE] = (t, 1 if r.ai_result == _POS else 0, 1)
                    if r.time_to_result_ms is not None:
                        slots[_TTR] = (t, bucket_key(r.time_to_result_ms, inv), 1)
                    if r.score is not None:
                        b = score_bin(r.score)
                        if b is not None:
                            slots[_PSI] = (t, b, 1)
                else:
                    slots[_FAILURE] = (t, 1, 1)

        raised = r.alert_raised_at_ms
        if raised is not None:
            response = r.time_to_response_ms
            if response is None:
                slots[_RESPONSE] = (raised, 0, 1)
            else:
                slots[_RESPONSE] = (raised, 1 if response <= self._sla_ms else 0, 1)
                slots[_TTRESP] = (raised, bucket_key(response, inv), 1)
                slots[_DISMISS] = (raised, 1 if r.alert_dismissed else 0, 1)
            slots[_ESCALATE] = (raised, 1 if r.alert_escalated else 0, 1)

        final = r.report_final_at_ms
        if final is not None:
            self._report(r, final, slots)

        version = r.algorithm_version
        dims = (
            r.site_id,
            r.algorithm_name,
            NO_VERSION if version is None else version,
            r.finding_code,
        )
        return dims, slots

    def _report(self, r: LineageRecord, t: int, slots: dict[int, Item]) -> None:
        outcome = r.outcome
        slots[_COVERAGE] = (t, 0 if outcome == Outcome.NO_AI_RESULT else 1, 1)
        amended = 1 if r.addendum_count > 0 else 0
        slots[_ADDENDUM] = (t, amended, 1)
        if outcome == _TP:
            slots[_PPV] = slots[_SENS] = (t, 1, 1)
            slots[_DISCORD] = (t, 0, 1)
            slots[_REVIEW] = (t, 1 if r.review_candidate else 0, 1)
            slots[_ADD_CONC] = (t, amended, 1)
        elif outcome == _FP:
            slots[_PPV] = slots[_SPEC] = (t, 0, 1)
            slots[_DISCORD] = (t, 1, 1)
            slots[_REVIEW] = (t, 1 if r.review_candidate else 0, 1)
            slots[_ADD_DISC] = (t, amended, 1)
        elif outcome == _FN:
            slots[_SENS] = (t, 0, 1)
            slots[_DISCORD] = (t, 1, 1)
            slots[_ADD_DISC] = (t, amended, 1)
        elif outcome == _TN:
            slots[_SPEC] = (t, 1, 1)
            slots[_DISCORD] = (t, 0, 1)
            slots[_ADD_CONC] = (t, amended, 1)
        tat = r.report_tat_ms
        if tat is not None and r.inference_status == _SUCCEEDED:
            if r.ai_result == _POS:
                slots[_TAT_POS] = (t, bucket_key(tat, self._inv_ln_gamma), 1)
            elif r.ai_result == _NEG:
                slots[_TAT_NEG] = (t, bucket_key(tat, self._inv_ln_gamma), 1)


def summarise_counts(spec: KpiSpec, numerator: int, denominator: int) -> Summary | None:
    """Returns the value of a proportion or count KPI, None when the denominator is 0.

    Proportions carry the Wilson 95 % interval; value and interval are multiplied by
    ``spec.scale``. A count's value is its numerator, without interval.
    """
    if denominator <= 0:
        return None
    num, den = float(numerator), float(denominator)
    if spec.kind is KpiKind.COUNT:
        return (num, den, num, None, None, None, None, None)
    low, high = wilson_interval(numerator, denominator)
    scale = spec.scale
    return (num, den, num / den * scale, low * scale, high * scale, None, None, None)


def summarise_durations(buckets: Mapping[int, int], gamma: float) -> Summary | None:
    """Returns p50 / p90 (value = p50, denominator = samples), None without samples."""
    q = quantiles(buckets, (0.5, 0.9), gamma)
    if q is None:
        return None
    p50, p90 = q
    return (None, float(sum(buckets.values())), p50, None, None, p50, p90, None)


def kpi_value(
    kpi: int,
    size: int,
    start_ms: int,
    dims: Dims,
    revision: int,
    final: bool,
    summary: Summary,
) -> KpiValue:
    """Returns the output record of a window: KPI ``KPIS[kpi]``, size ``WINDOW_SPECS[size]``.

    Built without validation: every field is computed here from typed values, and
    validating hundreds of thousands of them per replay cost more than the windows did.
    It sets the instance state ``model_construct`` sets, without its per-field default
    handling (every field is given), which cost 15 us per value. A unit test checks the
    result equals the validated model, field by field.
    """
    numerator, denominator, value, low, high, p50, p90, p_value = summary
    spec = WINDOW_SPECS[size]
    record = _new_kpi_value(KpiValue)
    # One shared fields-set: the model is frozen, and a copy (``model_copy``) copies it.
    _set_attr(record, "__pydantic_fields_set__", _KPI_VALUE_FIELDS)
    _set_attr(record, "__pydantic_extra__", None)
    _set_attr(record, "__pydantic_private__", None)
    # A literal, in field order (the order of a validated model's ``__dict__``); every
    # number of a Summary is already a float.
    _set_attr(
        record,
        "__dict__",
        {
            "kpi": _KPI_NAMES[kpi],
            "window_size": spec.name,
            "window_start_ms": start_ms,
            "window_end_ms": start_ms + spec.size_ms,
            "site_id": dims[0],
            "algorithm_name": dims[1],
            "algorithm_version": dims[2],
            "finding_code": dims[3],
            "numerator": numerator,
            "denominator": denominator,
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "p50": p50,
            "p90": p90,
            "p_value": p_value,
            "final": final,
            "revision": revision,
        },
    )
    return record


_KPI_VALUE_FIELDS = set(KpiValue.model_fields)
_KPI_NAMES = tuple(spec.name for spec in KPIS)
_new_kpi_value = object.__new__
_set_attr = object.__setattr__
