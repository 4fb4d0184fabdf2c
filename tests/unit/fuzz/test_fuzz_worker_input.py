"""Fuzzing the live worker's input: Kafka messages -> events or dead letters.

The entry point is the one the lineage agent calls for every batch it consumes,
:meth:`LineageStage.process` (Confluent framing, the schema registry, the Avro body,
the model and the value rules; then the join). Inputs are the sample events encoded as
the simulator sends them (framed, or unframed with the ``imgov.schema_id`` header),
mutated; random bytes; tombstones; and structure-aware records: valid Avro written
with any registered event schema (older versions too) whose values are anything the
schema allows.

The property, for every batch: nothing escapes ``process``; each message is either an
accepted event (which decodes to a valid event on its own) or exactly one dead letter
with a reason, a message naming where it came from, and the original key, value and
headers unchanged.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import fastavro
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import EVENT_SUBJECTS, HEADER_SCHEMA_ID, Codec, schema_for_reading
from schemas.corpus import sample_events
from schemas.errors import DecodeError
from schemas.events import Event
from schemas.records import DeadLetter, DeadLetterReason
from schemas.registry import registry_from_environ
from schemas.validation import EventValidator
from sinks.clickhouse.rows import event_payload, event_row, lineage_row, rejected_row
from streams.governance import build_pseudonymiser, lineage_config, load_settings
from streams.runtime.outputs import InputMessage, OutputEncoder
from streams.runtime.staged_store import DictPartitionedStore, StagedMapping
from streams.runtime.stages import LineageStage
from streams.topics import WorkerTopics
from tests.unit.fuzz.avro_values import avro_value
from tests.unit.fuzz.mutations import fuzzed_bytes, mutated
from tests.unit.fuzz.profile import FUZZ
from tests.unit.fuzz.tally import TALLY

NOW_MS = 1_760_000_000_000
TOPICS = WorkerTopics.with_namespace("fuzz.")
VALIDATOR = EventValidator(lambda: NOW_MS)
CODEC = Codec(registry_from_environ({}), validator=VALIDATOR)
EVENTS = sample_events(60, seed=16, end_ms=NOW_MS)
FRAMED = [CODEC.encode(e) for e in EVENTS]
BODIES = [CODEC.encode(e, framed=False) for e in EVENTS]
WRITERS = [
    (entry.schema_id, entry.schema)
    for subject in sorted(EVENT_SUBJECTS)
    for entry in CODEC.registry.versions(subject)
]
"""Every registered version of the three event schemas: (schema id, schema)."""

Headers = tuple[tuple[str, bytes | None], ...]


@cache
def _settings() -> Any:
    return load_settings(demo=True)


def _stage() -> LineageStage:
    settings = _settings()
    return LineageStage(
        lineage_config(settings),
        settings.kpi.allowed_lateness_ms,
        CODEC,
        StagedMapping(DictPartitionedStore()),
        build_pseudonymiser(settings),
        lambda: NOW_MS,
        TOPICS.inputs,
    )


@st.composite
def schema_valid_records(draw: st.DrawFn) -> tuple[bytes | None, Headers]:
    """Valid Avro of a registered event schema, values from a sample event or anything."""
    schema_id, schema = draw(st.sampled_from(WRITERS))
    generated = draw(avro_value(schema))
    sample = draw(st.sampled_from(EVENTS)).model_dump()
    shared = sorted(k for k in generated if k in sample)
    kept = draw(st.sets(st.sampled_from(shared))) if shared else set()
    record = {**generated, **{k: sample[k] for k in kept}}
    body = io.BytesIO()
    try:
        fastavro.schemaless_writer(body, schema_for_reading(schema), record)
    except (ValueError, TypeError, KeyError, AttributeError):
        # A sample's value that no longer fits an older schema; the generated one does.
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema_for_reading(schema), generated)
    if draw(st.booleans()):
        return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue(), ()
    return body.getvalue(), ((HEADER_SCHEMA_ID, str(schema_id).encode()),)


_HEADER_VALUES = st.one_of(
    st.sampled_from([str(i).encode() for i, _ in WRITERS]),
    st.integers(-5, 2**40).map(lambda i: str(i).encode()),
    st.binary(max_size=12),
    st.none(),
)


@st.composite
def unframed(draw: st.DrawFn) -> tuple[bytes | None, Headers]:
    """A body with its schema id in a header, the header or the body mutated."""
    value = draw(st.sampled_from(BODIES) | mutated(BODIES))
    return value, ((HEADER_SCHEMA_ID, draw(_HEADER_VALUES)),)


_EXTRA_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["imgov.source", "x", HEADER_SCHEMA_ID, ""]),
        st.none() | st.binary(max_size=8),
    ),
    max_size=2,
).map(tuple)

messages = st.tuples(
    st.one_of(
        fuzzed_bytes(FRAMED).map(lambda v: (v, ())),
        unframed(),
        schema_valid_records(),
        st.just((None, ())),
    ),
    _EXTRA_HEADERS,
    st.none() | st.binary(max_size=24) | st.sampled_from([e.study_uid.encode() for e in EVENTS]),
    st.sampled_from(TOPICS.inputs),
    st.integers(0, 2),
)


def _batch(drawn: list[Any]) -> list[InputMessage]:
    return [
        InputMessage(topic, partition, offset, key, value, headers + extra, NOW_MS)
        for offset, ((value, headers), extra, key, topic, partition) in enumerate(drawn)
    ]


def check_batch(batch: list[InputMessage]) -> None:
    """The property; also the body of the regression examples."""
    out = _stage().process(batch)
    accepted = {(source.topic, source.partition, source.offset) for _, source in out.events}
    letters = {
        (letter.source_topic, letter.source_partition, letter.source_offset): letter
        for letter in out.dead_letters
    }
    assert len(letters) == len(out.dead_letters), "two dead letters for one message"
    assert len(accepted) == len(out.events), "two events for one message"
    for message in batch:
        where = (message.topic, message.partition, message.offset)
        assert (where in accepted) != (where in letters), f"{where}: dropped or doubled"
        if where in letters:
            letter = letters[where]
            assert letter.reason in DeadLetterReason
            assert letter.message.startswith(
                f"{message.topic}[{message.partition}]@{message.offset}: "
            )
            assert len(letter.message) > len(f"{message.topic}[0]@0: ")
            assert letter.value == (message.value or b"")
            assert letter.key == message.key
            assert tuple((h.key, h.value) for h in letter.headers) == message.headers
        else:
            assert message.value is not None
            event: Event = CODEC.decode_event(message.value, message.headers)
            assert VALIDATOR.validate(event) == event
            assert type(event).model_validate(event.model_dump()) == event
    # What the agent does next must not fail either: the rows for ClickHouse, then the
    # messages (every dead letter is Avro-encoded for the dead-letter topic).
    for event, source in out.events:
        event_row(event, event_payload(event), source, NOW_MS)
    for letter in out.dead_letters:
        rejected_row(letter, NOW_MS)
    for record in out.lineage:
        lineage_row(record)
    encoder = OutputEncoder(CODEC, TOPICS)
    encoder.lineage_and_contributions(out.lineage)
    encoder.reviews(out.reviews)
    produced = encoder.dead_letters(out.dead_letters)
    for letter, outgoing in zip(out.dead_letters, produced, strict=True):
        assert CODEC.decode(outgoing.value, DeadLetter) == letter
    TALLY.record(
        "kafka input (worker)",
        accepted=len(out.events),
        rejected=[letter.reason.value for letter in out.dead_letters],
    )


@FUZZ
@given(st.lists(messages, min_size=1, max_size=4))
def test_every_kafka_message_becomes_an_event_or_a_dead_letter_with_its_bytes(
    drawn: list[Any],
) -> None:
    check_batch(_batch(drawn))


def test_the_seeds_are_accepted_and_a_truncated_one_refused() -> None:
    # The harness's own check: the seeds are valid, so what fails is their mutation.
    assert CODEC.decode_event(FRAMED[0]) == EVENTS[0]
    try:
        CODEC.decode_event(FRAMED[0][:-1])
    except DecodeError as error:
        assert error.reason == DeadLetterReason.UNDECODABLE
    else:
        raise AssertionError("a truncated body was accepted")
