"""The HL7 v2 gateway through the real broker, fed by python-hl7's ``mllp_send``.

Every good sample must come back from the report topic as the events the mapping makes
of it, with its provenance headers; every file of the bad corpus must come back from
the dead-letter topic with its original bytes; and ``mllp_send`` (a real third-party
MLLP client, run as its own process) must have received AA for exactly the first and
AR/AE for the second. Each test has its own topic namespace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.codec import Codec
from schemas.records import DeadLetter, DeadLetterReason
from schemas.registry import registry_from_environ
from schemas.validation import EventValidator
from streams.gateway.delivery import CONTROL_ID_HEADER, SOURCE_HEADER, KafkaDelivery
from streams.gateway.hl7 import load_hl7_mapping, parse_message, report_events
from streams.gateway.mllp import END_BLOCK, START_BLOCK, MllpListener
from streams.runtime.topic_admin import TopicRole, TopicSpec, create_topics
from streams.topics import WorkerTopics
from tests.integration.test_live_harness import free_port
from tests.unit.gateway.test_mllp import BAD, BAD_EXPECTED, GOOD, wire

pytestmark = pytest.mark.kafka

BIN = Path(sys.executable).parent
MLLP_SEND = str(BIN / "mllp_send")
IMGOV = str(BIN / "imgov")
MAPPING = load_hl7_mapping()
CODEC = Codec(registry_from_environ(os.environ))


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[WorkerTopics]:
    """The report and dead-letter topics behind a fresh namespace; deleted after."""
    names = WorkerTopics.with_namespace(f"it-gw-{uuid.uuid4().hex[:10]}.")
    specs = [
        TopicSpec(name=names.report, role=TopicRole.INPUT, partitions=3, replication_factor=1),
        TopicSpec(name=names.dlq, role=TopicRole.DLQ, partitions=1, replication_factor=1),
    ]
    create_topics(kafka_bootstrap, specs)
    yield names
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([names.report, names.dlq])
    except Exception:  # best effort: a leftover test topic harms nobody
        pass
    finally:
        admin.close()


def sent_by_mllp_send(data: bytes) -> bytes:
    """What ``mllp_send`` puts between the frame's delimiters for a message."""
    return data.strip(START_BLOCK + b"\r")


def frames_file(path: Path, samples: list[Path]) -> Path:
    """Writes the samples as MLLP frames, the input format of ``mllp_send --file``."""
    path.write_bytes(b"".join(START_BLOCK + wire(p) + END_BLOCK for p in samples))
    return path


def answers(stdout: bytes) -> list[list[str]]:
    """The ACKs ``mllp_send`` printed (each a framed message and a new line)."""
    acks = [a for a in stdout.split(END_BLOCK + b"\n") if a.strip()]
    return [a.strip(START_BLOCK).decode().split("\r") for a in acks]


def msa(ack: list[str]) -> list[str]:
    return next(s for s in ack if s.startswith("MSA|")).split("|")


async def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 30) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions), waiting for them."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def mllp_send(port: int, file: Path) -> bytes:
    process = await asyncio.create_subprocess_exec(
        MLLP_SEND, "--port", str(port), "--file", str(file), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return stdout


async def test_mllp_send_through_the_gateway_to_kafka(
    kafka_bootstrap: str, topics: WorkerTopics, tmp_path: Path
) -> None:
    delivery = await KafkaDelivery.connect(kafka_bootstrap, CODEC, topics, timeout_s=20)
    listener = MllpListener(
        delivery, MAPPING, validator=EventValidator(lambda: time.time_ns() // 1_000_000)
    )
    await listener.start("127.0.0.1", 0)
    try:
        samples = [*GOOD, *BAD]
        stdout = await mllp_send(listener.port, frames_file(tmp_path / "in.mllp", samples))
    finally:
        assert await listener.stop(10)
        await delivery.close()

    # What the sender was told, message by message.
    acks = answers(stdout)
    expected_codes = ["AA"] * len(GOOD) + [BAD_EXPECTED[p.name][0] for p in BAD]
    assert [msa(a)[1] for a in acks] == expected_codes

    # Every accepted event is on the report topic, keyed by study, with provenance.
    expected = {
        e.event_id: (e, parse_message(wire(p)).segment("MSH")(10))
        for p in GOOD
        for e in report_events(parse_message(wire(p)), MAPPING)
    }
    records = await read_topic(kafka_bootstrap, topics.report, len(expected))
    assert len(records) == len(expected)
    for record in records:
        event = CODEC.decode_event(record.value)
        wanted, control_id = expected.pop(event.event_id)
        assert event == wanted
        assert record.key == event.study_uid.encode()
        headers = dict(record.headers)
        assert headers[SOURCE_HEADER].startswith(b"mllp://127.0.0.1:")
        assert headers[CONTROL_ID_HEADER] == str(control_id).encode()
    assert expected == {}

    # Every refused message is on the dead-letter topic with the bytes that were sent.
    letters = [
        CODEC.decode(r.value, DeadLetter)
        for r in await read_topic(kafka_bootstrap, topics.dlq, len(BAD))
    ]
    assert [letter.value for letter in letters] == [sent_by_mllp_send(wire(p)) for p in BAD]
    assert [letter.reason for letter in letters] == [BAD_EXPECTED[p.name][1] for p in BAD]
    assert all(letter.message.startswith("HL7 v2 over MLLP, mllp://") for letter in letters)


async def test_when_kafka_does_not_take_the_events_the_sender_is_told_to_resend(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # A namespace whose topics do not exist (the broker does not create topics): the
    # broker never acknowledges, as in an outage of the partition leader.
    missing = WorkerTopics.with_namespace(f"it-gw-missing-{uuid.uuid4().hex[:10]}.")
    delivery = await KafkaDelivery.connect(kafka_bootstrap, CODEC, missing, timeout_s=2)
    listener = MllpListener(delivery, MAPPING)
    await listener.start("127.0.0.1", 0)
    try:
        stdout = await mllp_send(listener.port, frames_file(tmp_path / "in.mllp", GOOD[:1]))
    finally:
        await listener.stop(10)
        await delivery.close()
    (ack,) = answers(stdout)
    assert msa(ack)[1] == "AR"
    err = next(s for s in ack if s.startswith("ERR|")).split("|")
    assert err[3].startswith("207^")
    assert "send the message again" in err[8]


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "imgov gateway exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"imgov gateway did not listen on {port} within {timeout_s:g}s")


def test_imgov_gateway_serves_mllp_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topics: WorkerTopics, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "IMGOV_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IMGOV_GATEWAY_TOPIC_NAMESPACE": topics.report.removesuffix("imaging.report.v1"),
        "IMGOV_GATEWAY_MLLP_PORT": str(port),
        "IMGOV_GATEWAY_FHIR_ENABLED": "false",
        "IMGOV_GATEWAY_DICOM_ENABLED": "false",
        "IMGOV_GATEWAY_METRICS_PORT": "0",
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [IMGOV, "gateway"], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            wait_listening(port, process)
            frames = frames_file(tmp_path / "in.mllp", [GOOD[1], BAD[0]])
            sent = subprocess.run(
                [MLLP_SEND, "--port", str(port), "--file", str(frames), "127.0.0.1"],
                capture_output=True,
                timeout=60,
                check=True,
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert [msa(a)[1] for a in answers(sent.stdout)] == ["AA", BAD_EXPECTED[BAD[0].name][0]]
    output = log.read_text()
    assert f"HL7 v2 over MLLP listening on 127.0.0.1:{port}" in output
    assert "SIGTERM received" in output
    assert "stopped: producer flushed" in output
    (expected,) = report_events(parse_message(wire(GOOD[1])), MAPPING)
    (record,) = asyncio.run(read_topic(kafka_bootstrap, topics.report, 1))
    assert CODEC.decode_event(record.value) == expected
    (dead,) = asyncio.run(read_topic(kafka_bootstrap, topics.dlq, 1))
    letter = CODEC.decode(dead.value, DeadLetter)
    assert (letter.reason, letter.value) == (
        DeadLetterReason.VALIDATION_FAILED,
        sent_by_mllp_send(wire(BAD[0])),
    )


@pytest.fixture
def rejected_database(clickhouse_writer: Any) -> Iterator[str]:
    """A fresh, migrated ClickHouse database; dropped after."""
    from tests.integration.test_live_harness import create_database, drop_database

    name = f"it_gateway_{uuid.uuid4().hex[:10]}"
    create_database(name)
    yield name
    drop_database(name)


async def test_dead_letters_also_reach_rejected_events_when_enabled(
    kafka_bootstrap: str, topics: WorkerTopics, rejected_database: str, tmp_path: Path
) -> None:
    from sinks.clickhouse.settings import ClickHouseSettings
    from sinks.clickhouse.writer import ClickHouseSink
    from tests.integration.test_live_harness import ch_client

    sink = ClickHouseSink.from_settings(ClickHouseSettings(database=rejected_database))
    delivery = await KafkaDelivery.connect(
        kafka_bootstrap, CODEC, topics, timeout_s=20, rejected=sink
    )
    listener = MllpListener(delivery, MAPPING)
    await listener.start("127.0.0.1", 0)
    try:
        stdout = await mllp_send(listener.port, frames_file(tmp_path / "in.mllp", BAD))
    finally:
        await listener.stop(10)
        await delivery.close()
    # Without a validator the 2099 report is accepted: the contract rules are not
    # checked here, only that every refusal reaches the table.
    refused = [p for p, ack in zip(BAD, answers(stdout), strict=True) if msa(ack)[1] != "AA"]
    assert len(refused) == len(BAD) - 1

    client = ch_client(rejected_database)
    try:
        rows = client.execute(
            "SELECT value, reason, header_keys, source_partition FROM rejected_events FINAL"
        )
    finally:
        client.disconnect()
    stored = sorted((value.encode() if isinstance(value, str) else value) for value, *_ in rows)
    assert stored == sorted(sent_by_mllp_send(wire(p)) for p in refused)
    assert {reason for _, reason, _, _ in rows} == {r for _, r, _ in BAD_EXPECTED.values()}
    assert all(SOURCE_HEADER in keys for _, _, keys, _ in rows)
    assert {partition for *_, partition in rows} == {-1}  # not read from a topic
