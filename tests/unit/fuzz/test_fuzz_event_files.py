"""Fuzzing the event files ``imgov replay`` reads: JSON Lines and Avro container files.

Entry points: :func:`schemas.files.read_jsonl` (every line -> an event or a
``RejectedInput``), :func:`streams.replay.driver.replay` (which turns each rejection into
a dead letter), and :func:`schemas.files.read_avro`. Files are made of lines the
simulator's writer produces, mutated as bytes or as JSON (a field dropped, added, or
given a value of any JSON type, ``event_type`` changed, keys reordered), and random
bytes, with LF or CRLF line ends, blank lines and a missing final newline.
"""

from __future__ import annotations

import io
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from hypothesis import example, given
from hypothesis import strategies as st

from schemas.corpus import sample_events
from schemas.errors import UndecodableError
from schemas.events import Event
from schemas.files import _AVRO_HEADER as _HEADER
from schemas.files import RejectedInput, event_to_json_line, read_avro, read_jsonl, write_avro
from schemas.records import DeadLetter, DeadLetterReason
from schemas.validation import EventValidator
from sinks.memory import MemorySink
from streams.governance import build_processor, load_settings
from streams.replay.driver import replay
from tests.unit.fuzz.mutations import JSON_VALUES, fuzzed_bytes, mutated
from tests.unit.fuzz.profile import FUZZ, fuzz_settings
from tests.unit.fuzz.tally import TALLY

NOW_MS = 1_760_000_000_000
VALIDATOR = EventValidator(lambda: NOW_MS)
EVENTS = sample_events(40, seed=16, end_ms=NOW_MS)
LINES = [event_to_json_line(e).rstrip(b"\n") for e in EVENTS]
FIELDS = sorted({k for line in LINES for k in json.loads(line)} | {"colour"})


@st.composite
def json_mutated(draw: st.DrawFn) -> bytes:
    """A valid line's object with fields dropped, added, retyped or reordered."""
    data: dict[str, Any] = json.loads(draw(st.sampled_from(LINES)))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(("drop", "any", "type", "nest")))
        if action == "drop":
            data.pop(name, None)
        elif action == "type":
            data[name] = draw(st.sampled_from(["inference", "alert", "report", "", "INFERENCE"]))
        elif action == "nest":
            data[name] = {name: data.get(name)}
        else:
            data[name] = draw(JSON_VALUES)
    items = list(data.items())
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(dict(items), separators=separators, ensure_ascii=draw(st.booleans()))
    return text.encode()


lines = st.one_of(
    fuzzed_bytes(LINES, max_random=200),
    json_mutated(),
    st.sampled_from([b"", b"  ", b"\r", b"\x0c", b"\xef\xbb\xbf{}", b"[]", b"null"]),
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    """1 to 6 lines, LF or CRLF, sometimes without the final newline."""
    chosen = draw(st.lists(lines, min_size=1, max_size=6))
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = end.join(chosen)
    return data + end if draw(st.booleans()) else data


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(line number, line without its end) of every line that is not blank."""
    numbered = enumerate(io.BytesIO(data).readlines(), start=1)
    stripped = ((n, line.rstrip(b"\r\n")) for n, line in numbered)
    return [(n, line) for n, line in stripped if line and not line.isspace()]


def check_jsonl(data: bytes) -> list[Event | RejectedInput]:
    """Every non-blank line gives one result, in order; refusals keep the line's bytes."""
    results = list(read_jsonl(io.BytesIO(data), validator=VALIDATOR))
    expected = expected_lines(data)
    assert len(results) == len(expected), "a line was dropped or doubled"
    for (number, line), result in zip(expected, results, strict=True):
        if isinstance(result, RejectedInput):
            assert (result.position, result.raw) == (number, line)
            assert result.reason in DeadLetterReason and str(result.error)
        else:
            assert VALIDATOR.validate(result) == result
            assert type(result).model_validate(result.model_dump()) == result
    return results


@FUZZ
@given(jsonl_files())
@example(b'{"event_type":"inference"}\n')
def test_every_jsonl_line_becomes_an_event_or_a_rejection_with_its_bytes(data: bytes) -> None:
    results = check_jsonl(data)
    TALLY.record(
        "jsonl reader",
        accepted=sum(not isinstance(r, RejectedInput) for r in results),
        rejected=[r.reason.value for r in results if isinstance(r, RejectedInput)],
    )


@cache
def _settings() -> Any:
    config = load_settings(demo=True)
    return config.model_copy(
        update={"kpi": config.kpi.model_copy(update={"emit_interval_ms": None})}
    )


@fuzz_settings(share=0.5)
@given(jsonl_files())
def test_replay_dead_letters_every_line_it_refuses_and_never_stops(data: bytes) -> None:
    read = check_jsonl(data)
    refused = {r.position: r.raw for r in read if isinstance(r, RejectedInput)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_bytes(data)
        sink = MemorySink()
        stats = replay([path], build_processor(_settings()), sink, VALIDATOR, chunk_size=3)
    letters = [
        letter
        for letter in sink.records(DeadLetter)
        if isinstance(letter, DeadLetter) and letter.source_topic == f"file:{path}"
    ]
    assert {letter.source_offset: letter.value for letter in letters} == refused
    assert len(letters) == len(refused) == stats.rejected
    assert stats.events == len(read) - len(refused)
    TALLY.record(
        "jsonl replay",
        accepted=stats.events,
        rejected=[letter.reason.value for letter in letters],
    )


def _avro_seeds() -> list[bytes]:
    seeds = []
    for codec, chunk in (("null", EVENTS[:6]), ("deflate", EVENTS[6:12]), ("null", EVENTS[:1])):
        out = io.BytesIO()
        write_avro(out, chunk, codec=codec)
        seeds.append(out.getvalue())
    return seeds


AVRO_SEEDS = _avro_seeds()


@st.composite
def avro_blocks_mutated(draw: st.DrawFn) -> bytes:
    """A file whose header is intact and whose blocks are mutated: most mutations of a
    whole file break its header (the schema is most of a small file)."""
    seed = draw(st.sampled_from(AVRO_SEEDS))
    reader = io.BytesIO(seed)
    fastavro.schemaless_reader(reader, _HEADER)
    head = reader.tell()
    return seed[:head] + draw(mutated([seed[head:]]))


@FUZZ
@given(st.one_of(fuzzed_bytes(AVRO_SEEDS).map(bytes), avro_blocks_mutated(), avro_blocks_mutated()))
def test_an_avro_file_is_refused_whole_or_read_record_by_record(data: bytes) -> None:
    try:
        results = list(read_avro(io.BytesIO(data), validator=VALIDATOR))
    except UndecodableError as error:
        # Not an Avro container file (its header is broken): refused before any result.
        assert str(error)
        TALLY.record("avro file reader", rejected=["UNDECODABLE (whole file)"])
        return
    # A record's bytes are those of its block, inflated first in a deflate file.
    deflated = b"avro.codec\x0edeflate" in data
    for result in results:
        if isinstance(result, RejectedInput):
            assert deflated or result.raw in data
            assert result.reason in DeadLetterReason and str(result.error)
        else:
            assert VALIDATOR.validate(result) == result
    TALLY.record(
        "avro file reader",
        accepted=sum(not isinstance(r, RejectedInput) for r in results),
        rejected=[r.reason.value for r in results if isinstance(r, RejectedInput)],
    )
