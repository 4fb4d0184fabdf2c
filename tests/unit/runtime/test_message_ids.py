"""The identity of KPI and breach messages (``imgov.message-id``): what a subscriber
deduplicates on. A repeat of the same output has the same identity; anything else a
subscriber must see has another."""

from __future__ import annotations

from schemas.codec import Codec
from schemas.records import Breach, BreachState, KpiValue, Severity
from schemas.registry import registry_from_environ
from streams.runtime.outputs import MESSAGE_ID_HEADER, OutputEncoder
from streams.topics import WorkerTopics

ENCODER = OutputEncoder(Codec(registry_from_environ({})), WorkerTopics.with_namespace(""))


def _kpi(**changes: object) -> KpiValue:
    base = dict(
        kpi="ppv",
        window_size="7d",
        window_start_ms=1_760_000_000_000,
        window_end_ms=1_760_604_800_000,
        site_id="site-01",
        algorithm_name="ich-detect",
        algorithm_version="2.1",
        finding_code="ICH",
        numerator=8.0,
        denominator=10.0,
        value=0.8,
        final=True,
        revision=1,
    )
    return KpiValue.model_validate({**base, **changes})


def _id(message: object) -> bytes:
    headers = dict(message.headers)  # type: ignore[attr-defined]
    return headers[MESSAGE_ID_HEADER]


def test_a_final_value_is_identified_by_its_window_and_revision() -> None:
    first, repeat = ENCODER.kpis([_kpi()])[0], ENCODER.kpis([_kpi()])[0]
    assert _id(first) == _id(repeat) == first.key + b"|final|1"
    revised = ENCODER.kpis([_kpi(revision=2, numerator=7.0, value=0.7)])[0]
    assert _id(revised) == first.key + b"|final|2"
    other_site = ENCODER.kpis([_kpi(site_id="site-02")])[0]
    assert _id(other_site) != _id(first)


def test_a_current_value_is_identified_by_its_content() -> None:
    now = ENCODER.kpis([_kpi(final=False)])[0]
    same = ENCODER.kpis([_kpi(final=False)])[0]
    filled = ENCODER.kpis([_kpi(final=False, numerator=9.0, value=0.9)])[0]
    assert _id(now) == _id(same)
    assert _id(filled) != _id(now)  # revision 1 both times: the content tells them apart
    assert _id(now).startswith(now.key + b"|current|")


def test_a_breach_is_identified_by_its_id_and_state() -> None:
    opened = Breach(
        breach_id="b-1",
        rule_id="ppv-low",
        kpi="ppv",
        severity=Severity.WARNING,
        state=BreachState.OPEN,
        window_size="7d",
        window_start_ms=1,
        window_end_ms=2,
        site_id="site-01",
        algorithm_name="ich-detect",
        algorithm_version="2.1",
        finding_code="ICH",
        evidence="opened",
    )
    resolved = opened.model_copy(update={"state": BreachState.RESOLVED, "evidence": "resolved"})
    ids = [_id(m) for m in ENCODER.breaches([opened, resolved, opened])]
    assert ids == [b"b-1|OPEN", b"b-1|RESOLVED", b"b-1|OPEN"]
