"""Producing a run to Kafka with aiokafka, in delivery order, optionally throttled.

Keys are the study UID (UTF-8), so all events of a study share a partition on the
co-partitioned input topics; values come from an injected ``encode(event) -> bytes``
(the Confluent-framed Avro codec in production, anything in tests).

Exceptions::

    ImgovError (schemas.errors)
    └── ProduceError     the broker could not be reached or refused a message
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from schemas.errors import ImgovError
from schemas.events import Event, EventType
from streams.kafka_security import KafkaLoginError, KafkaSecurity, check_login
from streams.topics import ALERT_TOPIC, INFERENCE_TOPIC, REPORT_TOPIC

__all__ = [
    "TOPIC_BY_EVENT_TYPE",
    "Encoder",
    "MessageSender",
    "ProduceError",
    "produce",
    "produce_to_kafka",
]

TOPIC_BY_EVENT_TYPE: dict[EventType, str] = {
    EventType.INFERENCE: INFERENCE_TOPIC,
    EventType.ALERT: ALERT_TOPIC,
    EventType.REPORT: REPORT_TOPIC,
}

Encoder = Callable[[Event], bytes]
"""Turns an event into a message value."""

_PENDING_LIMIT = 5_000
"""Delivery futures awaited in batches, so memory stays bounded and errors surface early."""


class ProduceError(ImgovError):
    """Kafka could not be reached, or refused a message."""


class MessageSender(Protocol):
    """The part of ``AIOKafkaProducer`` this module uses (a fake in tests)."""

    async def send(self, topic: str, value: bytes, key: bytes) -> Awaitable[object]: ...

    async def flush(self) -> None: ...


async def produce(
    sender: MessageSender,
    events: Sequence[Event],
    encode: Encoder,
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Sends ``events`` in order and waits until every one is acknowledged.

    Args:
        sender: a started producer.
        events: in delivery order.
        encode: builds each message value.
        rate: at most this many events per second (None: as fast as possible).
        on_progress: called with the number of events sent since the last call.
        clock: monotonic seconds, for the throttle.

    Returns:
        The number of messages sent.

    Raises:
        ProduceError: a send failed; the message names topic and key.
    """
    pending: list[tuple[Awaitable[object], str, str]] = []
    started = clock()
    # Throttle and report in small batches: sleeping per message costs more than it delays.
    step = max(1, int(rate // 100)) if rate else 1_000
    reported = 0
    for sent, event in enumerate(events, start=1):
        topic = TOPIC_BY_EVENT_TYPE[event.event_type]
        future = await sender.send(topic, value=encode(event), key=event.study_uid.encode())
        pending.append((future, topic, event.study_uid))
        if len(pending) >= _PENDING_LIMIT:
            await _settle(pending)
        if sent % step == 0:
            if on_progress is not None:
                on_progress(sent - reported)
            reported = sent
            if rate:
                ahead = started + sent / rate - clock()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    await sender.flush()
    await _settle(pending)
    if on_progress is not None and reported < len(events):
        on_progress(len(events) - reported)
    return len(events)


async def _settle(pending: list[tuple[Awaitable[object], str, str]]) -> None:
    for future, topic, key in pending:
        try:
            await future
        except Exception as exc:  # aiokafka raises KafkaError subclasses and timeouts
            raise ProduceError(f"producing to {topic} (key {key}) failed: {exc}") from exc
    pending.clear()


async def produce_to_kafka(
    bootstrap: str,
    events: Sequence[Event],
    encode: Encoder,
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    security: KafkaSecurity | None = None,
) -> int:
    """Opens an idempotent aiokafka producer on ``bootstrap`` and runs ``produce``.

    The producer uses the TLS and SASL of ``security`` (PLAINTEXT when omitted).

    Raises:
        ProduceError: Kafka is unreachable, refused the login (named), or refused a
            message.
    """
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    security = security or KafkaSecurity()
    try:
        await check_login(bootstrap, security)
    except KafkaLoginError as exc:
        raise ProduceError(str(exc)) from exc
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="imgov-simulate",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        **security.client_options(),
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise ProduceError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        return await produce(producer, events, encode, rate=rate, on_progress=on_progress)
    finally:
        await producer.stop()
