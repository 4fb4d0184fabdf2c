"""The MLLP listener on real sockets (127.0.0.1, a free port), with the in-memory delivery.

What a sender sees (the ACK on the wire) is checked against what was stored (events or
dead letters): AA only once the events are delivered, AR 207 (resend) when Kafka did not take them,
AR/AE plus a dead letter with the original bytes for every message of the bad corpus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from hl7.mllp import open_hl7_connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from streams.gateway.delivery import (
    CONTROL_ID_HEADER,
    SOURCE_HEADER,
    DeliveryError,
    MemoryDelivery,
)
from streams.gateway.hl7 import load_hl7_mapping, parse_message, report_events
from streams.gateway.mllp import END_BLOCK, START_BLOCK, MllpListener, frame

DATA = Path(__file__).parents[2] / "data" / "hl7"
GOOD = sorted((DATA / "good").iterdir())
BAD = sorted((DATA / "bad").iterdir())
MAPPING = load_hl7_mapping()
NOW_MS = 1_768_000_000_000  # 2026-01-09T23:06:40Z, after every sample's times


def wire(path: Path) -> bytes:
    """A sample as a sender puts it on the wire: segments ended by CR."""
    return path.read_bytes().replace(b"\n", b"\r")


# Every file of the bad corpus: the answer (MSA-1), the dead letter's reason, ERR-3.
BAD_EXPECTED: dict[str, tuple[str, DeadLetterReason, str]] = {
    "adt_a01_not_a_result.hl7": ("AR", DeadLetterReason.VALIDATION_FAILED, "200"),
    "binary_noise.bin": ("AR", DeadLetterReason.UNDECODABLE, "100"),
    "empty.hl7": ("AR", DeadLetterReason.UNDECODABLE, "100"),
    "iso_timestamp.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "102"),
    "no_control_id.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "101"),
    "no_obr.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "100"),
    "no_study_uid.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "101"),
    "not_hl7.txt": ("AR", DeadLetterReason.UNDECODABLE, "100"),
    "order_in_progress.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "103"),
    "pid_before_msh.hl7": ("AR", DeadLetterReason.UNDECODABLE, "100"),
    "reported_in_2099.hl7": ("AE", DeadLetterReason.VALIDATION_FAILED, "102"),
    "segment_without_name.hl7": ("AR", DeadLetterReason.UNDECODABLE, "100"),
    "truncated_msh.hl7": ("AR", DeadLetterReason.VALIDATION_FAILED, "200"),
    "version_2_6.hl7": ("AR", DeadLetterReason.VALIDATION_FAILED, "203"),
}


def test_every_file_of_the_bad_corpus_has_an_expectation() -> None:
    assert sorted(p.name for p in BAD) == sorted(BAD_EXPECTED)


class Client:
    """One MLLP connection through python-hl7's asyncio client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> list[str]:
        """Sends one message; returns the segments of its ACK."""
        self.writer.write(frame(data))
        await self.writer.drain()
        return await self.ack()

    async def ack(self) -> list[str]:
        block = await asyncio.wait_for(self.reader.readblock(), 10)
        return str(block.decode()).split("\r")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def listener_for(delivery: MemoryDelivery, **options: object) -> MllpListener:
    return MllpListener(
        delivery,
        MAPPING,
        validator=EventValidator(lambda: NOW_MS),
        clock=lambda: NOW_MS,
        **options,  # type: ignore[arg-type]
    )


Connect = Callable[[], Awaitable[Client]]


@pytest.fixture
def delivery() -> MemoryDelivery:
    return MemoryDelivery()


@pytest.fixture
async def listener(delivery: MemoryDelivery) -> AsyncIterator[MllpListener]:
    server = listener_for(delivery)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop(5)


@pytest.fixture
async def connect(listener: MllpListener) -> AsyncIterator[Callable[[], Awaitable[Client]]]:
    clients: list[Client] = []

    async def open_client() -> Client:
        reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
        clients.append(Client(reader, writer))
        return clients[-1]

    yield open_client
    for client in clients:
        client.writer.close()


def msa(ack: list[str]) -> list[str]:
    return next(s for s in ack if s.startswith("MSA|")).split("|")


def err(ack: list[str]) -> list[str]:
    return next(s for s in ack if s.startswith("ERR|")).split("|")


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Waits until ``condition()`` holds (the server works in the same event loop)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --- good messages --------------------------------------------------------------------


@pytest.mark.parametrize("path", GOOD, ids=[p.name for p in GOOD])
async def test_a_good_message_is_answered_aa_with_its_events_delivered(
    path: Path, connect: Connect, delivery: MemoryDelivery
) -> None:
    data = wire(path)
    control_id = parse_message(data).segment("MSH")(10)
    client = await connect()

    ack = await client.send(data)

    assert ack[0].split("|")[8] == "ACK^R01^ACK"
    assert msa(ack)[1:3] == ["AA", str(control_id)]
    assert delivery.events() == report_events(parse_message(data), MAPPING)
    assert {(d.source.rpartition(":")[0], d.control_id) for d in delivery.delivered} == {
        ("mllp://127.0.0.1", str(control_id))
    }
    assert delivery.dead_letters == []


async def test_repeating_obx_and_escaped_delimiters_arrive_resolved(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    assert msa(await client.send(wire(DATA / "good" / "repeating_obx_v24.hl7")))[1] == "AA"
    assert msa(await client.send(wire(DATA / "good" / "escaped_delimiters_v231.hl7")))[1] == "AA"

    repeated, escaped = delivery.events()
    # Three text OBX, a measurement, two observations of one finding (the correction
    # wins) and a plain-valued one: only the coded findings become labels.
    assert [(f.finding_code, f.label.value) for f in repeated.findings] == [
        ("ICH", "PRESENT"),
        ("PE", "ABSENT"),
    ]
    assert escaped.report_id == "RPT|3^A&B~C\\D"
    assert escaped.accession_number == "ACC&0003"


async def test_aa_is_sent_only_once_the_delivery_returned(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    delivery.gate = asyncio.Event()
    client = await connect()
    client.writer.write(frame(wire(GOOD[0])))
    await client.writer.drain()
    await asyncio.wait_for(delivery.entered.wait(), 10)

    # The delivery is in flight (the broker has not acknowledged): no answer yet.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(1), 0.2)
    assert delivery.delivered == []

    delivery.gate.set()
    assert msa(await client.ack())[1] == "AA"
    assert len(delivery.delivered) == 1


async def test_when_kafka_does_not_take_the_events_the_answer_is_ar_resend(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    data = wire(GOOD[0])
    delivery.failure = DeliveryError("broker unreachable")

    ack = await client.send(data)

    assert msa(ack)[1] == "AR"  # not about the content: resend
    assert err(ack)[3].startswith("207^")
    assert "send the message again" in err(ack)[8]
    assert delivery.delivered == []
    assert delivery.dead_letters == []  # the message is good: not a dead letter

    # Kafka is back: the same message on the same connection is accepted.
    delivery.failure = None
    assert msa(await client.send(data))[1] == "AA"
    assert len(delivery.delivered) == 1


async def test_a_good_message_sent_twice_gives_the_same_events(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    data = wire(GOOD[0])
    await client.send(data)
    await client.send(data)  # the sender lost the first ACK
    first, second = delivery.events()
    assert first == second  # same event id: the pipeline keeps one


# --- bad messages ---------------------------------------------------------------------


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
async def test_a_bad_message_is_refused_and_dead_lettered_with_its_bytes(
    path: Path, connect: Connect, delivery: MemoryDelivery
) -> None:
    answer, reason, code = BAD_EXPECTED[path.name]
    data = wire(path)
    client = await connect()

    ack = await client.send(data)

    assert msa(ack)[1] == answer
    assert err(ack)[3].startswith(f"{code}^")
    assert err(ack)[4] == "E"
    assert delivery.delivered == []
    (letter,) = delivery.dead_letters
    assert letter.value == data
    assert letter.reason is reason
    assert letter.received_at_ms == NOW_MS
    headers = {h.key: h.value for h in letter.headers}
    assert headers[SOURCE_HEADER].startswith(b"mllp://127.0.0.1:")
    control_id = msa(ack)[2]
    assert headers.get(CONTROL_ID_HEADER) == (control_id.encode() if control_id else None)
    # The reason never carries an identifier of the sample's patient.
    assert b"MRN0001" not in letter.message.encode()
    assert "MRN0001" not in "\r".join(ack)


async def test_when_the_dead_letter_is_not_stored_the_answer_is_ar_resend(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    delivery.failure = DeliveryError("broker unreachable")
    ack = await client.send(wire(DATA / "bad" / "not_hl7.txt"))
    assert msa(ack)[1] == "AR"
    assert err(ack)[3].startswith("207^")
    assert delivery.dead_letters == []


async def test_a_garbage_frame_is_refused_and_the_connection_goes_on(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    client.writer.write(b"GET / HTTP/1.1\r\n\r\n" + END_BLOCK)  # no start block
    assert msa(await client.ack())[1] == "AR"
    assert msa(await client.send(wire(GOOD[0])))[1] == "AA"

    (letter,) = delivery.dead_letters
    assert letter.reason is DeadLetterReason.UNDECODABLE
    assert letter.value == b"GET / HTTP/1.1\r\n\r\n"
    assert "no start block" in letter.message
    assert len(delivery.delivered) == 1


async def test_an_oversized_frame_is_dead_lettered_and_the_connection_goes_on(
    delivery: MemoryDelivery,
) -> None:
    server = listener_for(delivery, max_message_bytes=4096)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await open_hl7_connection("127.0.0.1", server.port)
        client = Client(reader, writer)
        huge = wire(GOOD[0]) + b"NTE|1||" + b"x" * 200_000 + b"\r"
        ack = await client.send(huge)
        assert msa(ack)[1] == "AR"
        assert msa(await client.send(wire(GOOD[0])))[1] == "AA"
        await client.close()
    finally:
        await server.stop(5)
    (letter,) = delivery.dead_letters
    assert letter.reason is DeadLetterReason.OVERSIZED
    assert huge.startswith(letter.value[1:])  # the start of the frame is kept
    assert 0 < len(letter.value) <= 64 * 1024
    assert len(delivery.delivered) == 1


async def test_several_messages_on_one_connection_are_answered_in_order(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    client = await connect()
    samples = [*GOOD, *BAD, *GOOD]
    # Sent back to back, before reading any answer (a pipelining sender).
    client.writer.write(b"".join(frame(wire(p)) for p in samples))
    await client.writer.drain()
    answers = [msa(await client.ack())[1] for _ in samples]

    expected = [BAD_EXPECTED[p.name][0] if p.name in BAD_EXPECTED else "AA" for p in samples]
    assert answers == expected
    assert len(delivery.dead_letters) == len(BAD)
    assert [d.value for d in delivery.dead_letters] == [wire(p) for p in BAD]
    good_events = [e for p in GOOD for e in report_events(parse_message(wire(p)), MAPPING)]
    assert delivery.events() == good_events + good_events


async def test_a_connection_that_breaks_mid_frame_leaves_the_others_unaffected(
    connect: Connect, delivery: MemoryDelivery
) -> None:
    broken = await connect()
    healthy = await connect()
    partial = wire(GOOD[0])[:80]
    broken.writer.write(START_BLOCK + partial)
    await broken.writer.drain()
    await broken.close()

    assert msa(await healthy.send(wire(GOOD[1])))[1] == "AA"
    await until(lambda: len(delivery.dead_letters) == 1)
    (letter,) = delivery.dead_letters
    assert letter.reason is DeadLetterReason.UNDECODABLE
    assert letter.value == START_BLOCK + partial  # what arrived, as it arrived
    assert "ended in the middle of a frame" in letter.message
    assert msa(await healthy.send(wire(GOOD[2])))[1] == "AA"


async def test_python_hl7s_blocking_client_gets_its_ack(
    listener: MllpListener, delivery: MemoryDelivery
) -> None:
    def send() -> bytes:
        with MLLPClient("127.0.0.1", listener.port) as client:
            reply: bytes = client.send_message(wire(DATA / "good" / "ct_pe_final_v251.hl7"))
            return reply

    reply = await asyncio.to_thread(send)
    assert reply.startswith(START_BLOCK) and reply.endswith(END_BLOCK)
    assert "\rMSA|AA|G-0001" in reply.decode()
    assert len(delivery.delivered) == 1


# --- stopping -------------------------------------------------------------------------


async def test_stop_answers_the_message_in_flight_then_refuses_connections(
    delivery: MemoryDelivery,
) -> None:
    server = listener_for(delivery)
    await server.start("127.0.0.1", 0)
    port = server.port
    idle_reader, idle_writer = await open_hl7_connection("127.0.0.1", port)
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    client = Client(reader, writer)
    delivery.gate = asyncio.Event()
    writer.write(frame(wire(GOOD[0])))
    await writer.drain()
    await asyncio.wait_for(delivery.entered.wait(), 10)

    stopping = asyncio.create_task(server.stop(10))
    await until(lambda: idle_reader.at_eof() or idle_reader.exception() is not None, 10)
    assert not stopping.done()  # it waits for the message in flight
    delivery.gate.set()

    assert msa(await client.ack())[1] == "AA"
    assert await stopping is True
    assert len(delivery.delivered) == 1
    with pytest.raises(OSError):
        await open_hl7_connection("127.0.0.1", port)
    idle_writer.close()
    writer.close()


# --- no input crashes it --------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_either_delivered_and_aa_or_dead_lettered_and_refused(data: bytes) -> None:
    delivery = MemoryDelivery()
    listener = listener_for(delivery)
    for sample in (data, wire(GOOD[0])[: len(data) % 300] + data, b"MSH|^~\\&|" + data):
        delivered, dead = len(delivery.delivered), len(delivery.dead_letters)
        ack = asyncio.run(listener.answer(sample, "mllp://127.0.0.1:1")).decode()
        code = msa(ack.split("\r"))[1]
        if code == "AA":
            assert len(delivery.delivered) > delivered
            assert len(delivery.dead_letters) == dead
        else:
            assert code in {"AE", "AR"}
            assert len(delivery.delivered) == delivered
            assert delivery.dead_letters[dead:] == delivery.dead_letters[-1:]
            assert delivery.dead_letters[-1].value == sample


async def test_a_message_the_mapping_fails_on_is_dead_lettered_and_answered_ae(
    delivery: MemoryDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.gateway.mllp as mllp

    def broken(*_: object) -> list[object]:
        raise IndexError("a bug in the mapping")

    monkeypatch.setattr(mllp, "report_events", broken)
    data = wire(DATA / "good" / "ct_pe_final_v251.hl7")
    ack = (await listener_for(delivery).answer(data, "mllp://127.0.0.1:1")).decode().split("\r")
    assert msa(ack)[1:3] == ["AE", "G-0001"]  # kept as a dead letter: not to be resent
    assert err(ack)[3].startswith("207^") and "kept as a dead letter" in err(ack)[8]
    (letter,) = delivery.dead_letters
    assert (letter.value, letter.reason) == (data, DeadLetterReason.VALIDATION_FAILED)
    assert "IndexError" in letter.message


@pytest.mark.parametrize(("room", "answer"), [(0, "AA"), (-1, "AR")])
async def test_the_size_limit_counts_the_message_not_its_framing(
    delivery: MemoryDelivery, room: int, answer: str
) -> None:
    data = wire(DATA / "good" / "ct_pe_final_v251.hl7")
    server = listener_for(delivery, max_message_bytes=len(data) + room)
    await server.start("127.0.0.1", 0)
    try:
        client = Client(*await open_hl7_connection("127.0.0.1", server.port))
        ack = await client.send(data)
        await client.close()
    finally:
        await server.stop(5)
    assert msa(ack)[1] == answer
    assert [d.reason for d in delivery.dead_letters] == (
        [] if answer == "AA" else [DeadLetterReason.OVERSIZED]
    )
