"""The Kafka producer loop, against a fake sender (no broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from schemas.codec import Codec
from schemas.events import Event
from schemas.registry import open_registry
from streams.simulate.producer import ProduceError, produce
from streams.simulate.run import SimulationRun
from streams.topics import ALERT_TOPIC, INFERENCE_TOPIC, REPORT_TOPIC


class FakeSender:
    """Records messages; every send is acknowledged at once unless told to fail."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.flushed = False
        self._fail_on = fail_on

    async def send(self, topic: str, value: bytes, key: bytes) -> Awaitable[object]:
        self.messages.append((topic, key, value))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self._fail_on is not None and len(self.messages) == self._fail_on:
            future.set_exception(RuntimeError("broker said no"))
        else:
            future.set_result(None)
        return future

    async def flush(self) -> None:
        self.flushed = True


def _events(run: SimulationRun, count: int | None = None) -> list[Event]:
    return [d.event for d in run.deliveries][:count]


async def test_events_go_to_their_topics_keyed_by_study(small_run: SimulationRun) -> None:
    events = _events(small_run)
    sender = FakeSender()
    progress: list[int] = []
    sent = await produce(sender, events, lambda e: e.event_id.encode(), on_progress=progress.append)
    assert sent == len(events) == sum(progress)
    assert sender.flushed
    topics = {"inference": INFERENCE_TOPIC, "alert": ALERT_TOPIC, "report": REPORT_TOPIC}
    for event, (topic, key, value) in zip(events, sender.messages, strict=True):
        assert topic == topics[event.event_type.value]
        assert key == event.study_uid.encode()
        assert value == event.event_id.encode()


async def test_values_are_confluent_framed_avro(small_run: SimulationRun) -> None:
    codec = Codec(open_registry())
    events = _events(small_run, 50)
    sender = FakeSender()
    await produce(sender, events, codec.encode)
    for event, (_, _, value) in zip(events, sender.messages, strict=True):
        assert value[0] == 0
        assert codec.decode_event(value) == event


async def test_rate_limits_the_throughput(small_run: SimulationRun) -> None:
    events = _events(small_run, 300)
    began = time.monotonic()
    await produce(FakeSender(), events, lambda e: b"", rate=1_000.0)
    assert time.monotonic() - began >= 0.25  # 300 events at 1000/s: at least 0.3 s


async def test_a_refused_message_raises(small_run: SimulationRun) -> None:
    with pytest.raises(ProduceError, match="broker said no"):
        await produce(FakeSender(fail_on=3), _events(small_run, 10), lambda e: b"")
