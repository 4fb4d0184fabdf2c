"""The identity of KPI and breach messages (``imgov.message-id``): what a subscriber
deduplicates on. A repeat of the same output has the same identity; anything else a
subscriber must see has another."""

from __future__ import annotations

from schemas.codec import Codec
from schemas.registry import registry_from_environ
from streams.runtime.outputs import MESSAGE_ID_HEADER, OutgoingMessage, OutputEncoder
from streams.topics import WorkerTopics
from tests.unit.sinks.factory import breaches, kpi_emissions

ENCODER = OutputEncoder(Codec(registry_from_environ({})), WorkerTopics.with_namespace(""))


def _ids(messages: list[OutgoingMessage]) -> list[bytes | None]:
    return [dict(m.headers)[MESSAGE_ID_HEADER] for m in messages]


def test_a_final_value_is_identified_by_its_window_and_revision() -> None:
    emissions = kpi_emissions()  # current, current, final r1, final r2 of one window
    messages = ENCODER.kpis(emissions)
    key = messages[0].key
    assert key is not None and all(m.key == key for m in messages)
    assert _ids(messages)[2:] == [key + b"|final|1", key + b"|final|2"]
    assert _ids(ENCODER.kpis(emissions)) == _ids(messages)  # a repeat: the same identities
    other_site = ENCODER.kpis([emissions[2].model_copy(update={"site_id": "site-9"})])
    assert _ids(other_site) != _ids(messages)[2:3]


def test_a_current_value_is_identified_by_its_content() -> None:
    now, filled = ENCODER.kpis(kpi_emissions()[:2])  # both revision 1, other counts
    first, second = _ids([now, filled])
    assert first is not None and second is not None
    assert first != second  # the content tells them apart
    assert first.startswith(now.key + b"|current|")  # type: ignore[operator]
    assert _ids(ENCODER.kpis(kpi_emissions()[:1])) == [first]


def test_a_breach_is_identified_by_its_id_and_state() -> None:
    opened, resolved, other = breaches()
    ids = _ids(ENCODER.breaches([opened, resolved, other, opened]))
    assert ids == [b"b-1|OPEN", b"b-1|RESOLVED", b"b-2|OPEN", b"b-1|OPEN"]
