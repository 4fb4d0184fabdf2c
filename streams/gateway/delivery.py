"""Where the gateway's listeners put what they accepted: Kafka, or memory in tests.

A listener answers a hospital system only after :meth:`Delivery.deliver` returned: the
events are then on the input topics, acknowledged by every in-sync replica (DESIGN §7,
§11). A message it cannot accept goes to :meth:`Delivery.dead_letter` with its original
bytes, under the same guarantee, before the refusal is answered.

Provenance (DESIGN §6) travels as message headers: ``imgov.source`` (the listener and
the connection, e.g. ``mllp://10.1.2.3:40112``) and ``imgov.control-id`` (the message's
control id, when the protocol has one). Keys are the study UID, as for every input.

:class:`KafkaDelivery` also writes each dead letter to a sink (ClickHouse
``rejected_events``) when given one: the worker writes the dead letters it makes
itself, but it does not read the dead-letter topic, so the gateway's would otherwise
reach only the topic.

Exceptions::

    ImgovError (schemas.errors)
    └── DeliveryError    Kafka (or the rejected-events sink) did not take it:
                         transient, the sender should send the message again
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.codec import Codec
from schemas.errors import ImgovError
from schemas.events import Event, EventType
from schemas.records import DeadLetter
from sinks.base import Sink
from streams.kafka_security import KafkaLoginError, KafkaSecurity, check_login
from streams.topics import WorkerTopics

__all__ = [
    "CONTROL_ID_HEADER",
    "SOURCE_HEADER",
    "Delivered",
    "Delivery",
    "DeliveryError",
    "KafkaDelivery",
    "MemoryDelivery",
    "RecordSender",
    "provenance_headers",
]

SOURCE_HEADER = "imgov.source"
"""Header naming where a gateway event came from: listener and connection."""
CONTROL_ID_HEADER = "imgov.control-id"
"""Header with the control id of the message an event came from (HL7 MSH-10)."""


class DeliveryError(ImgovError):
    """Kafka did not take the events or the dead letter (transient: the sender should
    retry; nothing was acknowledged to it)."""


class Delivery(Protocol):
    """The one seam between the gateway's listeners and Kafka."""

    async def deliver(
        self, events: Sequence[Event], *, source: str, control_id: str | None = None
    ) -> None:
        """Puts ``events`` on their input topics; returns once the broker acknowledged
        every one (acks=all).

        Raises:
            DeliveryError: any of them was not acknowledged.
        """
        ...

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Puts ``letter`` on the dead-letter topic; returns once it is acknowledged.

        Raises:
            DeliveryError: it was not.
        """
        ...


def provenance_headers(source: str, control_id: str | None) -> tuple[tuple[str, bytes], ...]:
    """The provenance headers of a gateway message (DESIGN §6)."""
    headers = [(SOURCE_HEADER, source.encode())]
    if control_id is not None:
        headers.append((CONTROL_ID_HEADER, control_id.encode()))
    return tuple(headers)


class RecordSender(Protocol):
    """The part of ``AIOKafkaProducer`` :class:`KafkaDelivery` uses (a fake in tests)."""

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...

    async def stop(self) -> None: ...


class KafkaDelivery:
    """Produces events and dead letters with an idempotent, acks=all producer.

    Args:
        sender: a started producer (``KafkaDelivery.connect`` opens one).
        codec: encodes every value (Confluent-framed Avro, as the simulator does).
        topics: the topic names, behind the worker's namespace.
        timeout_s: the longest wait for the broker's acknowledgement of one call.
        rejected: also gets every dead letter, flushed before ``dead_letter`` returns
            (ClickHouse ``rejected_events``); None: the topic only.
    """

    def __init__(
        self,
        sender: RecordSender,
        codec: Codec,
        topics: WorkerTopics,
        *,
        timeout_s: float = 30.0,
        rejected: Sink | None = None,
    ) -> None:
        self._sender = sender
        self._codec = codec
        self._topics = topics
        self._timeout_s = timeout_s
        self._rejected = rejected
        self._rejected_lock = asyncio.Lock()
        self._by_type = {
            EventType.INFERENCE: topics.inference,
            EventType.ALERT: topics.alert,
            EventType.REPORT: topics.report,
        }

    @classmethod
    async def connect(
        cls,
        bootstrap: str,
        codec: Codec,
        topics: WorkerTopics,
        *,
        timeout_s: float = 30.0,
        rejected: Sink | None = None,
        client_id: str = "imgov-gateway",
        security: KafkaSecurity | None = None,
    ) -> KafkaDelivery:
        """Starts an idempotent aiokafka producer (acks=all) on ``bootstrap``, with the
        TLS and SASL of ``security`` (PLAINTEXT when omitted).

        Raises:
            DeliveryError: Kafka cannot be reached, or refused the login (named).
        """
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
        from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

        security = security or KafkaSecurity()
        try:
            await check_login(bootstrap, security, timeout_s)
        except KafkaLoginError as exc:
            raise DeliveryError(str(exc)) from exc
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=int(timeout_s * 1000),
            **security.client_options(),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise DeliveryError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        return cls(producer, codec, topics, timeout_s=timeout_s, rejected=rejected)

    async def deliver(
        self, events: Sequence[Event], *, source: str, control_id: str | None = None
    ) -> None:
        """See :meth:`Delivery.deliver`; the events are encoded before any is sent.

        Raises:
            DeliveryError: the broker did not acknowledge one of them in time.
            EncodeError: an event does not fit its schema (a mapping bug, not transient).
        """
        headers = list(provenance_headers(source, control_id))
        records = [
            (self._by_type[e.event_type], e.study_uid.encode(), self._codec.encode(e))
            for e in events
        ]
        await self._send_all(records, headers, f"{len(records)} event(s) from {source}")

    async def dead_letter(self, letter: DeadLetter) -> None:
        """See :meth:`Delivery.dead_letter`; then the letter goes to the rejected sink.

        A resend after a failure of the sink repeats the letter on the topic; the table
        keeps one row (its key is the reason and the bytes' SHA-256).

        Raises:
            DeliveryError: the broker did not acknowledge it, or the sink failed.
        """
        value = self._codec.encode(letter)
        await self._send_all([(self._topics.dlq, letter.key, value)], [], "a dead letter")
        if self._rejected is not None:
            # One flush at a time: the sink is not thread-safe, and flushes are rare.
            async with self._rejected_lock:
                try:
                    await asyncio.to_thread(self._store_rejected, letter)
                except ImgovError as exc:
                    raise DeliveryError(f"rejected_events did not take it: {exc}") from exc

    def _store_rejected(self, letter: DeadLetter) -> None:
        assert self._rejected is not None
        self._rejected.add(letter)
        self._rejected.flush()

    async def _send_all(
        self,
        records: Sequence[tuple[str, bytes | None, bytes]],
        headers: list[tuple[str, bytes]],
        what: str,
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                pending = [
                    await self._sender.send(topic, value, key=key, headers=headers)
                    for topic, key, value in records
                ]
                # Every future is awaited, so none is left with an unread failure.
                results = await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError as exc:
            raise DeliveryError(
                f"{what}: Kafka did not acknowledge within {self._timeout_s:g}s"
            ) from exc
        except Exception as exc:  # aiokafka raises KafkaError subclasses from send()
            raise DeliveryError(f"{what}: Kafka refused it: {exc}") from exc
        for (topic, _, _), result in zip(records, results, strict=True):
            if isinstance(result, BaseException):
                raise DeliveryError(f"{what}: producing to {topic} failed: {result}") from result

    async def close(self) -> None:
        """Flushes what is in flight and stops the producer; then flushes the sink."""
        await self._sender.stop()
        if self._rejected is not None:
            await asyncio.to_thread(self._rejected.close)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One event as :class:`MemoryDelivery` received it."""

    event: Event
    source: str
    control_id: str | None
    value: bytes | None = None
    """The encoded value, when the delivery was given an encoder."""


class MemoryDelivery:
    """Keeps what it is given, in order; for unit tests and the benchmark's ceiling.

    Attributes:
        delivered: every event delivered, in order.
        dead_letters: every dead letter, in order.
        failure: while set, every call raises it and keeps nothing (a broker outage).
        gate: when not None, every call waits until it is set: a test can hold a
            delivery in flight and see that nothing was acknowledged meanwhile.
        entered: set when a call starts waiting on ``gate``.

    Args:
        encode: when given, each event is encoded (the benchmark's ceiling counts it).
    """

    def __init__(self, encode: Callable[[Event], bytes] | None = None) -> None:
        self._encode = encode
        self.delivered: list[Delivered] = []
        self.dead_letters: list[DeadLetter] = []
        self.failure: DeliveryError | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def deliver(
        self, events: Sequence[Event], *, source: str, control_id: str | None = None
    ) -> None:
        encode = self._encode
        done = [
            Delivered(e, source, control_id, None if encode is None else encode(e)) for e in events
        ]
        await self._wait()
        self.delivered.extend(done)

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._wait()
        self.dead_letters.append(letter)

    async def _wait(self) -> None:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure

    def events(self) -> list[Event]:
        """The events delivered so far, in order."""
        return [d.event for d in self.delivered]
