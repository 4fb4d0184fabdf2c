"""What the Faust agents do with each batch: the commit protocol of the live worker.

Both agents take batches with ``stream.noack_take`` (Faust acknowledges nothing by
itself) and, per batch, in this order (DESIGN §7, STYLE rule 8):

1. the stage computes every output; state changes stay staged;
2. the rows go to the ClickHouse sink, which is flushed in a worker thread; while
   ClickHouse is down the flush backs off and is retried, forever, with the batch's
   offsets unacknowledged (backpressure: the agent takes no new batch meanwhile);
3. the output messages are produced and the producer flushed;
4. the staged state is written (local store, then changelog) and the producer flushed
   again, so the changelog holds it;
5. the input messages are acknowledged; Faust commits acknowledged offsets on its
   timer (``broker_commit_interval``), always after step 4.

A crash anywhere before 5 redelivers the batch: steps 2-3 rewrite the same keyed rows
and messages (idempotent), and the state of step 4 either is not there yet (same
outputs again) or already contains the batch (duplicates ignored, see ``stages``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sinks.base import Output, SinkBackpressureError, SinkError
from sinks.clickhouse.writer import ClickHouseSink
from streams.runtime.outputs import InputMessage, OutgoingMessage, OutputEncoder
from streams.runtime.staged_store import PartitionedStore, StagedWrite
from streams.runtime.stages import KpiStage, LineageStage

__all__ = ["BatchRunner", "SinkFlusher", "input_messages"]

log = logging.getLogger("imgov.worker")


def input_messages(events: Iterable[Any]) -> list[InputMessage]:
    """Converts Faust events (raw bytes serializers) to :class:`InputMessage`."""
    out = []
    for event in events:
        m = event.message
        headers = m.headers
        if isinstance(headers, dict):
            pairs = tuple(headers.items())
        else:
            pairs = tuple((k, v) for k, v in (headers or ()))
        ts = m.timestamp
        out.append(
            InputMessage(
                m.topic,
                m.partition,
                m.offset,
                m.key,
                m.value,
                pairs,
                None if ts is None else int(ts * 1000),
            )
        )
    return out


class SinkFlusher:
    """Owns one ClickHouse sink and the thread its blocking writes run in."""

    def __init__(self, sink: ClickHouseSink, name: str) -> None:
        self.sink = sink
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{name}")

    async def flush(self) -> None:
        """Returns once every added row is written; retries while ClickHouse is down."""
        loop = asyncio.get_running_loop()
        warned = False
        while True:
            try:
                await loop.run_in_executor(self._executor, self.sink.flush)
                if warned:
                    log.warning("ClickHouse is back; %d rows written", self.sink.rows_written)
                return
            except SinkBackpressureError as exc:
                if not warned:
                    log.warning("ClickHouse unavailable, holding offsets and retrying: %s", exc)
                    warned = True
                await asyncio.sleep(min(max(exc.retry_after_s, 0.2), 5.0))
            except SinkError as exc:
                # A rejected batch (not an outage): keep the rows, retry slowly, stay alive.
                log.error("ClickHouse rejected a batch, retrying in 5 s: %s", exc)
                await asyncio.sleep(5.0)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class BatchRunner:
    """Runs the commit protocol for both stages; one per worker process.

    Args:
        producer_send: ``(message) -> awaitable`` that enqueues one message.
        producer_flush: waits until every enqueued message is acknowledged.
        assignment: returns the worker's current topic-partition assignment.
        encoder: turns outputs into messages.
        lineage: the lineage stage, and ``lineage_store``/``lineage_sink`` for it.
        kpi: the KPI stage, and ``kpi_store``/``kpi_sink`` for it.
        clock: monotonic seconds (idle detection).
    """

    def __init__(
        self,
        *,
        producer_send: Callable[[OutgoingMessage], Any],
        producer_flush: Callable[[], Any],
        assignment: Callable[[], frozenset[Any]],
        encoder: OutputEncoder,
        lineage: LineageStage,
        lineage_store: PartitionedStore,
        lineage_sink: SinkFlusher,
        kpi: KpiStage,
        kpi_store: PartitionedStore,
        kpi_sink: SinkFlusher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = producer_send
        self._flush = producer_flush
        self._assignment = assignment
        self._encoder = encoder
        self.lineage = lineage
        self._lineage_store = lineage_store
        self._lineage_sink = lineage_sink
        self.kpi = kpi
        self._kpi_store = kpi_store
        self._kpi_sink = kpi_sink
        self._clock = clock
        self._lineage_assignment: frozenset[Any] | None = None
        self._kpi_assignment: frozenset[Any] | None = None
        self.last_input_s = clock()
        self.closed_since_input = False
        self.in_flight = 0
        self.events_in = 0

    async def _produce(self, messages: Sequence[OutgoingMessage]) -> None:
        pending = [await self._send(m) for m in messages]
        await self._flush()
        for future in pending:
            await future  # raises if the broker refused a message

    async def _write_state(self, store: PartitionedStore, writes: list[StagedWrite]) -> None:
        if writes:
            store.write(writes)
            await self._flush()

    async def lineage_batch(self, events: Sequence[Any], ack: Callable[[Any], Any]) -> None:
        """Runs one batch of input messages through the protocol, then acks them."""
        self.in_flight += 1
        try:
            assignment = self._assignment()
            if assignment != self._lineage_assignment:
                self.lineage.rebuild()
                self._lineage_assignment = assignment
            messages = input_messages(events)
            batch = self.lineage.process(messages)
            sink = self._lineage_sink.sink
            for event, source in batch.events:
                sink.add_event(event, source)
            records: list[Output] = [*batch.lineage, *batch.reviews, *batch.dead_letters]
            for record in records:
                sink.add(record)
            await self._lineage_sink.flush()
            enc = self._encoder
            await self._produce(
                enc.lineage(batch.lineage)
                + enc.reviews(batch.reviews)
                + enc.dead_letters(batch.dead_letters)
                + enc.contributions(batch.lineage)
            )
            await self._write_state(self._lineage_store, self.lineage.state.take_writes())
            for event in events:
                await ack(event)
            self.events_in += len(messages)
        finally:
            self.in_flight -= 1
            self.last_input_s = self._clock()
            self.closed_since_input = False

    async def kpi_batch(self, events: Sequence[Any], ack: Callable[[Any], Any]) -> None:
        """Runs one batch of contributions through the protocol, then acks them."""
        assignment = self._assignment()
        if assignment != self._kpi_assignment:
            self.kpi.reset()
            self._kpi_assignment = assignment
        batch = self.kpi.process(input_messages(events))
        sink = self._kpi_sink.sink
        outputs: list[Output] = [*batch.kpis, *batch.breaches]
        for record in outputs:
            sink.add(record)
        await self._kpi_sink.flush()
        await self._produce(self._encoder.kpis(batch.kpis) + self._encoder.breaches(batch.breaches))
        await self._write_state(self._kpi_store, self.kpi.take_writes())
        for event in events:
            await ack(event)

    async def send_close_markers(self, partitions: int) -> None:
        """Idle close: one control message to every contributions partition."""
        await self._produce(self._encoder.close_markers(partitions))
        self.closed_since_input = True
