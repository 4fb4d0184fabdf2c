"""Every item of the bad-input corpus is rejected with exactly its reason."""

from __future__ import annotations

import io
from collections import Counter

import pytest

from schemas.codec import Codec
from schemas.corpus import CorpusItem, bad_input_corpus, bad_jsonl_lines, sample_events
from schemas.errors import DecodeError
from schemas.events import AlertEvent, InferenceEvent, ReportEvent
from schemas.file_registry import FileSchemaRegistry
from schemas.files import RejectedInput, read_jsonl
from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from tests.unit.schemas.conftest import NOW_MS

# Reasons the core (late input) or the sinks (refused rows) give, not the decoder.
DECODE_REASONS = set(DeadLetterReason) - {
    DeadLetterReason.LATE_AFTER_EVICTION,
    DeadLetterReason.LATE_AFTER_WINDOW_CLOSED,
    DeadLetterReason.SINK_REJECTED,
}


def _corpus() -> list[CorpusItem]:
    codec = Codec(FileSchemaRegistry(), validator=EventValidator(lambda: NOW_MS))
    return bad_input_corpus(codec, now_ms=NOW_MS, seed=3)


CORPUS = _corpus()


@pytest.mark.parametrize("item", CORPUS, ids=[item.name for item in CORPUS])
def test_each_bad_message_gets_exactly_its_reason(codec: Codec, item: CorpusItem) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode_event(item.value, item.headers)
    assert caught.value.reason is item.expected, str(caught.value)
    if item.field is not None:
        assert caught.value.field == item.field
    assert str(caught.value)  # a message a person can act on


def test_the_corpus_covers_every_decode_reason() -> None:
    assert {item.expected for item in CORPUS} == DECODE_REASONS
    assert len({item.name for item in CORPUS}) == len(CORPUS)


def test_the_corpus_is_deterministic_by_seed(codec: Codec) -> None:
    again = bad_input_corpus(codec, now_ms=NOW_MS, seed=3)
    assert again == CORPUS
    other = bad_input_corpus(codec, now_ms=NOW_MS, seed=4)
    assert [i.value for i in other] != [i.value for i in CORPUS]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_jsonl_corpus_gets_exactly_its_reasons(validator: EventValidator, seed: int) -> None:
    items = bad_jsonl_lines(now_ms=NOW_MS, seed=seed)
    results = list(read_jsonl(io.BytesIO(b"\n".join(i.value for i in items)), validator=validator))
    assert len(results) == len(items)
    for number, (item, result) in enumerate(zip(items, results, strict=True), start=1):
        assert isinstance(result, RejectedInput), item.name
        assert (result.position, result.reason) == (number, item.expected), item.name
        assert item.field is None or result.error.field == item.field, item.name
        assert result.raw == item.value
    assert {i.expected for i in items} == DECODE_REASONS


def test_sample_events_are_valid_and_mixed(validator: EventValidator) -> None:
    events = sample_events(2_000, seed=11, end_ms=NOW_MS)
    assert sample_events(2_000, seed=11, end_ms=NOW_MS) == events
    for event in events:
        assert validator.validate(event) is event
    mix = Counter(type(e) for e in events)
    assert set(mix) == {InferenceEvent, AlertEvent, ReportEvent}
    assert len({e.event_id for e in events}) == len(events)
