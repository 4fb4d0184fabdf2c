"""Fuzzing the HL7 v2 listener: MLLP frames -> ReportEvents or dead letters.

Entry points: :meth:`MllpListener.answer` (one message: parse, map, validate, deliver or
dead-letter, and the ACK) and the connection handler that reads MLLP frames off a stream
(``MllpListener._serve``, what the server runs per connection), fed from a real
``asyncio`` stream reader. Messages start from the samples of ``tests/data/hl7`` (good
and bad), mutated as bytes, or rebuilt as "segment soup": the samples' segments
shuffled, dropped, repeated, with fields and components replaced by HL7-ish text.

The property: no exception escapes; the answer is an ACK that parses, AA exactly when
events were delivered (each a valid event), else AE/AR with exactly one dead letter
holding the message's bytes and a reason; never the "application error" a mapping bug
gets. On a stream: one answer per frame end, a dead letter for a frame cut off by the
end of the connection, and every dead letter's bytes are bytes of the stream.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import hl7  # type: ignore[import-untyped]
import pytest
from hl7.mllp.streams import HL7StreamReader  # type: ignore[import-untyped]
from hypothesis import example, given
from hypothesis import strategies as st

from schemas.events import ReportEvent
from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from streams.gateway.delivery import MemoryDelivery
from streams.gateway.hl7 import load_hl7_mapping
from streams.gateway.mllp import APPLICATION_ERROR, END_BLOCK, START_BLOCK, MllpListener
from tests.unit.fuzz.mutations import date_times, fuzzed_bytes, mutated, seed_of
from tests.unit.fuzz.profile import FUZZ
from tests.unit.fuzz.tally import TALLY

# python-hl7 logs odd escape sequences with the deprecated Logger.warn.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

DATA = Path(__file__).parents[2] / "data" / "hl7"
NOW_MS = 1_768_000_000_000  # after every sample's times
VALIDATOR = EventValidator(lambda: NOW_MS)
MAPPING = load_hl7_mapping()
GOOD = [p.read_bytes().replace(b"\n", b"\r") for p in sorted((DATA / "good").iterdir())]
BAD = [p.read_bytes().replace(b"\n", b"\r") for p in sorted((DATA / "bad").iterdir())]
SEEDS = GOOD + BAD
SEGMENTS = sorted({s for m in SEEDS for s in m.split(b"\r") if s.strip()})
SOURCE = "mllp://127.0.0.1:40112"

_HL7_TEXT = st.text(
    alphabet=st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-+ |^~\\&\r\né\x00"),
    max_size=24,
)


@st.composite
def field_mutated(draw: st.DrawFn, segment: bytes) -> bytes:
    """``segment`` with a field or component replaced, duplicated or removed."""
    fields = segment.split(b"|")
    at = draw(st.integers(0, len(fields) - 1))
    action = draw(st.sampled_from(("replace", "component", "duplicate", "drop", "extend")))
    if action == "replace":
        fields[at] = draw(_HL7_TEXT).encode()
    elif action == "component":
        parts = fields[at].split(b"^")
        parts[draw(st.integers(0, len(parts) - 1))] = draw(_HL7_TEXT).encode()
        fields[at] = b"^".join(parts)
    elif action == "duplicate":
        fields.insert(at, fields[at])
    elif action == "drop" and at > 0:
        del fields[at]
    else:
        fields += [b""] * draw(st.integers(1, 40)) + [draw(_HL7_TEXT).encode()]
    return b"|".join(fields)


TIME_FIELDS = ((b"MSH", 7), (b"OBR", 7), (b"OBR", 8), (b"OBR", 22))
"""Where the samples carry times: MSH-7 (sent), OBR-7/8 (exam), OBR-22 (result)."""


@st.composite
def times_changed(draw: st.DrawFn) -> bytes:
    """A good sample with one of its times replaced by any DTM-shaped text."""
    segments = draw(seed_of(GOOD)).split(b"\r")
    name, number = draw(st.sampled_from(TIME_FIELDS))
    at = next(i for i, s in enumerate(segments) if s.startswith(name))
    fields = segments[at].split(b"|")
    number -= name == b"MSH"  # MSH-1 is the field separator itself
    fields += [b""] * (number + 1 - len(fields))
    fields[number] = draw(date_times).encode()
    segments[at] = b"|".join(fields)
    return b"\r".join(segments)


@st.composite
def segment_soup(draw: st.DrawFn) -> bytes:
    """An MSH of a sample, then segments of any sample, some with a field mutated."""
    seed = draw(st.sampled_from(GOOD))
    msh, *rest = seed.split(b"\r")
    chosen = draw(st.lists(st.sampled_from(SEGMENTS + rest), max_size=10))
    segments = [msh, *chosen] if draw(st.integers(0, 9)) else chosen
    for _ in range(draw(st.integers(0, 3))):
        if segments:
            at = draw(st.integers(0, len(segments) - 1))
            segments[at] = draw(field_mutated(segments[at]))
    end = draw(st.sampled_from([b"\r", b"\n", b"\r\n"]))
    return end.join(segments) + (end if draw(st.booleans()) else b"")


@st.composite
def one_field_changed(draw: st.DrawFn) -> bytes:
    """A good sample with one field or component of one segment changed."""
    segments = draw(seed_of(GOOD)).split(b"\r")
    at = draw(st.integers(0, len(segments) - 1))
    segments[at] = draw(field_mutated(segments[at]))
    return b"\r".join(segments)


# Byte-level mutations of every sample; then HL7-aware ones of the good samples.
messages = st.one_of(
    fuzzed_bytes(SEEDS).map(bytes), segment_soup(), one_field_changed(), times_changed()
)


def _listener(delivery: MemoryDelivery, **options: Any) -> MllpListener:
    return MllpListener(delivery, MAPPING, validator=VALIDATOR, clock=lambda: NOW_MS, **options)


def _msa(ack: bytes) -> list[str]:
    segments = ack.decode().split("\r")
    hl7.parse("\r".join(segments))  # the sender's library must be able to read it
    return next(s for s in segments if s.startswith("MSA|")).split("|")


def _err(ack: bytes) -> list[str]:
    return next(s for s in ack.decode().split("\r") if s.startswith("ERR|")).split("|")


def check_answer(data: bytes) -> str:
    """The property of one message; returns "AA", or the dead letter's reason."""
    delivery = MemoryDelivery()
    ack = asyncio.run(_listener(delivery).answer(data, SOURCE))
    code = _msa(ack)[1]
    if code == "AA":
        assert delivery.delivered and not delivery.dead_letters
        for delivered in delivery.delivered:
            assert isinstance(delivered.event, ReportEvent)
            assert VALIDATOR.validate(delivered.event) == delivered.event
        return code
    assert code in ("AE", "AR"), code
    assert not delivery.delivered
    (letter,) = delivery.dead_letters
    assert letter.value == data
    assert letter.reason in DeadLetterReason and letter.message
    assert _err(ack)[3].split("^")[0] != APPLICATION_ERROR, letter.message  # a mapping bug
    return letter.reason.value


def _result_time(text: bytes) -> bytes:
    """The first good sample with OBR-22 (the result's time) set to ``text``."""
    segments = GOOD[0].split(b"\r")
    at = next(i for i, s in enumerate(segments) if s.startswith(b"OBR|"))
    fields = segments[at].split(b"|")
    fields[22] = text
    segments[at] = b"|".join(fields)
    return b"\r".join(segments)


@FUZZ
@given(messages)
# Found by this test: instants the calendar cannot hold in UTC (OverflowError, answered
# as an internal error before the fix).
@example(_result_time(b"00010101+1400"))
@example(_result_time(b"99991231235959-1200"))
def test_every_hl7_message_is_delivered_and_aa_or_dead_lettered_and_refused(data: bytes) -> None:
    outcome = check_answer(data)
    if outcome == "AA":
        TALLY.record("hl7 message (mllp answer)", accepted=1)
    else:
        TALLY.record("hl7 message (mllp answer)", rejected=[outcome])


# --- frames on a connection -------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A frame of a message, its start or end block sometimes missing or doubled."""
    message = draw(st.sampled_from(GOOD) | messages)
    start = draw(
        st.sampled_from([START_BLOCK, START_BLOCK, b"", b"\r\n" + START_BLOCK, START_BLOCK * 2])
    )
    end = draw(st.sampled_from([END_BLOCK, END_BLOCK, b"\x1c", b"", END_BLOCK + b"\r"]))
    return start + message + end


streams = st.one_of(
    st.lists(frames(), min_size=1, max_size=4).map(b"".join),
    mutated(
        [START_BLOCK + m + END_BLOCK for m in GOOD[:2]]
        + [b"".join(START_BLOCK + m + END_BLOCK for m in GOOD)]
    ),
    st.binary(max_size=300),
)


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Writer:
    """The part of a stream writer ``_serve`` uses; keeps what it is given."""

    def __init__(self) -> None:
        self.written = bytearray()

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40112) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


async def _serve(listener: MllpListener, data: bytes, limit: int) -> bytes:
    reader = HL7StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    await listener._serve(reader, writer)
    return bytes(writer.written)


def check_stream(data: bytes, max_message_bytes: int) -> tuple[int, list[str]]:
    """The property of one connection; returns (messages accepted, dead-letter reasons)."""
    delivery = MemoryDelivery()
    listener = _listener(delivery, max_message_bytes=max_message_bytes)
    written = asyncio.run(_serve(listener, data, max_message_bytes + 64))
    answers = [a for a in written.split(END_BLOCK) if a]
    assert all(a.startswith(START_BLOCK) for a in answers)
    codes = [_msa(a[1:])[1] for a in answers]
    assert len(answers) == data.count(END_BLOCK), "a frame was not answered"
    ended = bool(data.split(END_BLOCK)[-1].strip())  # a frame cut off by the end
    accepted = codes.count("AA")
    assert len(delivery.dead_letters) == len(answers) - accepted + ended, "a frame was lost"
    for letter in delivery.dead_letters:
        assert letter.value in data and letter.reason in DeadLetterReason and letter.message
    return accepted, [letter.reason.value for letter in delivery.dead_letters]


@FUZZ
@given(streams, st.sampled_from([1 << 20, 300]))
@example(START_BLOCK + GOOD[0] + b"\x1c", 1 << 20)
def test_every_frame_on_a_connection_is_answered_or_dead_lettered(
    data: bytes, max_message_bytes: int
) -> None:
    # _serve logs what escapes a frame's handling and closes the connection.
    failures = _Failures()
    log = logging.getLogger("imgov.gateway.mllp")
    log.addHandler(failures)
    try:
        accepted, reasons = check_stream(data, max_message_bytes)
    finally:
        log.removeHandler(failures)
    assert not failures.records, failures.records[0].getMessage()
    TALLY.record("mllp stream (connection)", accepted=accepted, rejected=reasons)
