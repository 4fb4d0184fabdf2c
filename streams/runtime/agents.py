"""What the Faust agents do with each batch: the commit protocol of the live worker.

Both agents take batches with ``stream.noack_take`` (Faust acknowledges nothing by
itself) and, per batch, in this order (DESIGN §7, STYLE rule 8):

1. the stage computes every output; state changes stay staged;
2. the rows go to the ClickHouse sink, which is flushed in a worker thread; while
   ClickHouse is down the flush backs off and is retried, forever, with the batch's
   offsets unacknowledged (backpressure: the agent takes no new batch meanwhile). A
   batch ClickHouse refuses for some of its values is split by the sink: the other
   rows are written and each refused row becomes a ``SINK_REJECTED`` dead letter, in
   ``rejected_events`` when the flush returns (``sinks.refusals``);
3. the output messages, those dead letters included, are produced and the producer
   flushed;
4. the staged state is written (local store, then changelog) and the producer flushed
   again, so the changelog holds it;
5. the input messages are acknowledged; Faust commits acknowledged offsets on its
   timer (``broker_commit_interval``), always after step 4.

A crash anywhere before 5 redelivers the batch: steps 2-3 rewrite the same keyed rows
and messages (idempotent), and the state of step 4 either is not there yet (same
outputs again) or already contains the batch (duplicates ignored, see ``stages``).

After each batch (and on a timer when input pauses), the lineage runner sends every
input partition's new watermark to the KPI stages (after the batch's contributions, so
a watermark never overtakes what it vouches for), marks caught-up sources idle, and
pauses the sources that run ahead of the slowest one (resuming the others).

The KPI agent does steps 1-3 per batch but 4-5 as a *checkpoint*, every
``checkpoint_interval_s`` (and at once when a rebalance starts): its state is one
snapshot of the windows per partition, too large to write per batch. Between
checkpoints its batches stay unacknowledged, so a crash replays them onto the last
snapshot, which reproduces the same final values. Current (non-final) values are
published on processing time, every ``current_interval_s``, as Kafka Streams emits
updates on its commit interval, rather than on event time: replayed history would
otherwise make the worker compute a current value for every few minutes of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.records import DeadLetter
from sinks.base import Output, SinkBackpressureError, SinkError
from sinks.clickhouse.writer import ClickHouseSink
from streams.runtime.outputs import InputMessage, OutgoingMessage, OutputEncoder
from streams.runtime.staged_store import PartitionedStore, StagedWrite
from streams.runtime.stages import KpiBatch, KpiStage, LineageBatch, LineageStage

if TYPE_CHECKING:
    from streams.runtime.anchor import CheckpointAnchor
    from streams.runtime.telemetry import WorkerTelemetry

__all__ = [
    "KpiRunner",
    "LineageRunner",
    "SinkFlusher",
    "WorkerIO",
    "input_messages",
    "owned_events",
]

log = logging.getLogger("imgov.worker")

_SLICE = 250
"""Records the KPI agent handles between two yields to the event loop: the lineage agent
shares the loop and is on the latency path (produce -> lineage row in ClickHouse),
while a batch of contributions can fan out to thousands of KPI values."""


def owned_events(
    events: Sequence[Any], owned: Set[tuple[str, int]]
) -> tuple[list[Any], list[InputMessage]]:
    """The events (and their messages) of the partitions in ``owned`` (topic, partition).

    Faust delivers what it fetched before a rebalance after it too. Applied to state
    reset for the new assignment, a message of a partition handed over changes state
    its new owner now writes: a live run's KPI stage snapshotted a contributions
    partition it had lost with only such a batch (offsets 626-824). One of a partition
    kept or newly assigned, before the seek to its committed offset that ends the
    rebalance, comes ahead of the messages before it: another run's KPI stage applied
    offsets 331-471 of a partition to fresh state, closed windows with their watermark
    records, and dead-lettered what came before them. Such messages are neither
    applied nor acknowledged: they are read again from the committed offset.
    """
    kept = [
        (event, message)
        for event, message in zip(events, input_messages(events), strict=True)
        if (message.topic, message.partition) in owned
    ]
    if len(kept) < len(events):
        log.info(
            "%d messages of partitions not assigned, or not yet sought to their"
            " committed offset, left to be read again",
            len(events) - len(kept),
        )
    return [e for e, _ in kept], [m for _, m in kept]


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

    def __init__(
        self, sink: ClickHouseSink, name: str, telemetry: WorkerTelemetry | None = None
    ) -> None:
        self.sink = sink
        self.name = name
        self._telemetry = telemetry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{name}")

    async def flush(self) -> list[DeadLetter]:
        """Returns once every added row is written; retries while ClickHouse is down.

        Returns:
            The ``SINK_REJECTED`` dead letters of the rows ClickHouse refused since the
            last flush (already in ``rejected_events``): the caller produces them to
            the dead-letter topic before it acknowledges the batch.
        """
        loop = asyncio.get_running_loop()
        warned = False
        started = time.perf_counter()
        while True:
            try:
                await loop.run_in_executor(self._executor, self.sink.flush)
                if warned:
                    log.warning("ClickHouse is back; %d rows written", self.sink.rows_written)
                refusals = self.sink.take_refusals()
                if self._telemetry is not None:
                    self._telemetry.flushed(self.name, self.sink, time.perf_counter() - started)
                    self._telemetry.refused(refusals)
                return [letter for refusal in refusals for letter in refusal.letters]
            except SinkBackpressureError as exc:
                if self._telemetry is not None:
                    self._telemetry.flush_failed(self.name, "unavailable")
                if not warned:
                    log.warning("ClickHouse unavailable, holding offsets and retrying: %s", exc)
                    warned = True
                await asyncio.sleep(min(max(exc.retry_after_s, 0.2), 5.0))
            except SinkError as exc:
                # A rejected statement, not a value (refused rows are split off by the
                # sink): an unknown column or a missing grant that an operator must fix.
                # Keep the rows, retry slowly, stay alive.
                if self._telemetry is not None:
                    self._telemetry.flush_failed(self.name, "rejected")
                log.error("ClickHouse rejected a batch, retrying in 5 s: %s", exc)
                await asyncio.sleep(5.0)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass(frozen=True, slots=True)
class WorkerIO:
    """What both runners use to reach Kafka: producing, flushing, the assignment.

    Attributes:
        send: ``(message) -> awaitable`` that enqueues one message.
        flush: waits until every enqueued message is acknowledged.
        assignment: returns the worker's current topic-partition assignment.
        encoder: turns outputs into messages.
        pause: stops fetching from ``(topic, partition)`` sources.
        resume: fetches from them again.
        highwater: the end offset last seen of a ``(topic, partition)``, or None.
        settled: whether the assignment is stable (no rebalance or table recovery
            running, during which the consumer's own pauses must be left alone).
        unsettled: the topic-partitions assigned and not yet sought to their committed
            offset since (``faust_fixes`` 5): what they deliver was fetched before.
        committed: the committed offset per topic-partition, as the consumer knows it.
        telemetry: where the runners report their work (metrics), or None.
    """

    send: Callable[[OutgoingMessage], Any]
    flush: Callable[[], Any]
    assignment: Callable[[], frozenset[Any]]
    encoder: OutputEncoder
    pause: Callable[[set[tuple[str, int]]], None] = lambda sources: None
    resume: Callable[[set[tuple[str, int]]], None] = lambda sources: None
    highwater: Callable[[str, int], int | None] = lambda topic, partition: None
    settled: Callable[[], bool] = lambda: True
    unsettled: Callable[[], Set[Any]] = frozenset
    committed: Callable[[], Mapping[Any, int | None]] = dict
    telemetry: WorkerTelemetry | None = None

    async def produce(self, messages: Sequence[OutgoingMessage]) -> None:
        """Produces ``messages`` and waits until the broker has every one of them."""
        pending = []
        for i, message in enumerate(messages, 1):
            pending.append(await self.send(message))
            if not i % _SLICE:
                await asyncio.sleep(0)  # see _SLICE
        await self.flush()
        for future in pending:
            await future  # raises if the broker refused a message
        if self.telemetry is not None:
            self.telemetry.produced(messages)

    async def write_state(self, store: PartitionedStore, writes: list[StagedWrite]) -> None:
        """Writes state (local store, then changelog) and waits for the changelog."""
        if writes:
            store.write(writes)
            await self.flush()


class LineageRunner:
    """Runs the commit protocol of the lineage stage; one per worker process.

    Args:
        io: producing, flushing and the assignment.
        stage: the lineage stage, ``store`` its state and ``sink`` its ClickHouse sink.
        input_topics: the topics the stage reads (its sources, per partition).
        contributions_partitions: partitions of the contributions topic.
        source_idle_s: a caught-up source that delivered nothing for this long is
            idle (left out of its partition's watermark) until its next message.
        align_skew_ms: sources whose watermark runs more than this ahead of the
            slowest are paused.
        anchor: makes the audit checkpoints of the owned partitions (``audit_tick``,
            and at stop), or None for none.
        clock: monotonic seconds (idle detection).
    """

    def __init__(
        self,
        *,
        io: WorkerIO,
        stage: LineageStage,
        store: PartitionedStore,
        sink: SinkFlusher,
        input_topics: Sequence[str] = (),
        contributions_partitions: int = 1,
        source_idle_s: float = 10.0,
        align_skew_ms: int = 2 * 3_600_000,
        anchor: CheckpointAnchor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._io = io
        self._anchor = anchor
        self.lineage = stage
        self._lineage_store = store
        self._lineage_sink = sink
        self._inputs = frozenset(input_topics)
        self._contributions = contributions_partitions
        self._source_idle_s = source_idle_s
        self._align_skew_ms = align_skew_ms
        self._clock = clock
        self._lineage_assignment: frozenset[Any] | None = None
        self._lock = asyncio.Lock()
        # Per (topic, partition): the last offset processed and when it arrived.
        self._positions: dict[tuple[str, int], tuple[int, float]] = {}
        self._paused: set[tuple[str, int]] = set()
        self._owned: set[tuple[str, int]] = set()
        self._hold_pauses_until_input = False
        self._started_s = self.last_input_s = clock()
        self.closed_since_input = False
        self.in_flight = 0
        self.events_in = 0
        self.redelivered = 0
        """Input messages skipped because their offsets were already applied."""

    async def lineage_batch(self, events: Sequence[Any], ack: Callable[[Any], Any]) -> None:
        """Runs one batch of input messages through the protocol, then acks them."""
        self.in_flight += 1
        try:
            async with self._lock:
                await self._lineage_batch(events, ack)
        finally:
            self.in_flight -= 1
            self.last_input_s = self._clock()
            self.closed_since_input = False

    async def _lineage_batch(self, events: Sequence[Any], ack: Callable[[Any], Any]) -> None:
        self._check_assignment()
        events, messages = owned_events(events, self._owned - self._io.unsettled())
        if not events:
            return
        started = time.perf_counter()
        try:
            batch = self.lineage.process(messages)
            await self._publish(batch)
            await self._io.write_state(self._lineage_store, self.lineage.state.take_writes())
        except BaseException:
            # Not acknowledged: the batch is delivered again and must apply again. (Best
            # effort: while the worker stops, the store may be closing under it.)
            with contextlib.suppress(Exception):
                self.lineage.discard()
            raise
        self.redelivered += batch.redelivered
        now = self._clock()
        for message in messages:
            self._positions[(message.topic, message.partition)] = (message.offset, now)
        self._hold_pauses_until_input = False
        for event in events:
            await ack(event)
        self.events_in += len(messages)
        if self._io.telemetry is not None:
            self._io.telemetry.batch_done("lineage", time.perf_counter() - started, messages)
        await self._event_time()

    async def _publish(self, batch: LineageBatch) -> None:
        """Steps 2 and 3: the rows to ClickHouse (flushed), then the messages."""
        sink = self._lineage_sink.sink
        for event, source in batch.events:
            sink.add_event(event, source)
        records: list[Output] = [*batch.lineage, *batch.reviews, *batch.dead_letters]
        for record in records:
            sink.add(record)
        refused = await self._lineage_sink.flush()
        letters = batch.dead_letters + refused
        if letters and self._io.telemetry is not None:
            self._io.telemetry.dead_letters("lineage", (d.reason for d in letters))
        enc = self._io.encoder
        await self._io.produce(
            enc.lineage_and_contributions(batch.lineage)
            + enc.reviews(batch.reviews)
            + enc.dead_letters(letters)
        )

    def _check_assignment(self) -> None:
        assignment = self._io.assignment()
        if assignment == self._lineage_assignment:
            return
        self.lineage.rebuild()
        self._lineage_assignment = assignment
        owned = {(tp[0], tp[1]) for tp in assignment if tp[0] in self._inputs}
        self.lineage.assign({p for _, p in owned})
        self._owned = owned
        self._paused &= owned
        self._positions = {s: v for s, v in self._positions.items() if s in owned}

    async def watermark_tick(self) -> None:
        """Timer: marks caught-up sources idle, then does what ``_event_time`` does.

        Skipped while a batch runs (its watermark must not overtake its contributions)
        and during a rebalance (the state of new partitions is still being recovered).
        """
        if self._lock.locked() or not self._io.settled():
            return
        async with self._lock:
            self._check_assignment()
            now = self._clock()
            for topic, p in sorted(self._owned - self._paused):
                if self.lineage.is_idle(topic, p):
                    continue
                offset, seen = self._positions.get((topic, p), (-1, self._started_s))
                # While sources are paused for it, a caught-up source is idle at once:
                # waiting the idle time would stall the whole backlog.
                if now - seen < self._source_idle_s and not self._paused:
                    continue
                # Idle means caught up, not merely quiet: a source with messages left
                # (or whose end is not known yet) keeps holding the watermark.
                end = self._io.highwater(topic, p)
                if end is not None and offset + 1 >= end:
                    log.debug("source %s[%d] caught up at offset %d: idle", topic, p, offset)
                    self.lineage.mark_idle(topic, p)
            if self._paused and now - self.last_input_s >= self._source_idle_s:
                # Pausing only bounds state; it must never stall. Nothing arrived for a
                # while with sources paused: let everything flow (the watermark, a
                # minimum, keeps the results right either way).
                log.info("no input for %.0f s with %d sources paused: resuming them",
                         now - self.last_input_s, len(self._paused))  # fmt: skip
                self._io.resume(set(self._paused))
                self._paused.clear()
                self._hold_pauses_until_input = True
            await self._event_time()

    async def _event_time(self) -> None:
        """Expiry, watermarks to the KPI stages, and pausing the sources that run ahead."""
        expired = LineageBatch()
        self.lineage.expire(expired)
        if expired.lineage or expired.dead_letters:
            await self._publish(expired)
            await self._io.write_state(self._lineage_store, self.lineage.state.take_writes())
        updates = self.lineage.watermark_updates()
        if updates:
            await self._io.produce(self._io.encoder.watermarks(updates, self._contributions))
        if self._hold_pauses_until_input or not self._io.settled():
            return
        ahead = self.lineage.sources_ahead(self._align_skew_ms) & self._owned
        pause, resume = ahead - self._paused, self._paused - ahead
        if pause:
            log.debug("pausing %s: ahead of the slowest source", sorted(pause))
            self._io.pause(pause)
        if resume:
            log.debug("resuming %s", sorted(resume))
            self._io.resume(resume)
        self._paused = ahead

    async def audit_tick(self) -> None:
        """Timer: an audit checkpoint of every owned partition, when one is due.

        Between batches (the state is what they wrote durably) and never during a
        rebalance (the state of new partitions is still being recovered).
        """
        if self._anchor is None or not self._anchor.due():
            return
        if self._lock.locked() or not self._io.settled():
            return
        async with self._lock:
            self._check_assignment()
            await self._audit_checkpoint()

    async def _audit_checkpoint(self) -> None:
        """Writes the checkpoints (ClickHouse), then produces them; the lock is held."""
        if self._anchor is None:
            return
        joiner = self.lineage.joiner
        made = await self._anchor.checkpoint(
            self._lineage_store,
            {p for _, p in self._owned},
            joiner.watermark_ms,
            joiner.eviction_cutoff_ms,
        )
        if made:
            await self._io.produce(self._io.encoder.audit_checkpoints(made))

    async def stop(self) -> None:
        """Graceful stop: waits for the batch in progress, then takes no other, and
        writes a last audit checkpoint of what the batches so far wrote.

        The lock is kept: batches Faust already handed over wait on it unacknowledged
        and are read again after a restart.
        """
        await self._lock.acquire()
        if self._anchor is not None and self._io.settled():
            try:
                await self._audit_checkpoint()
            except Exception as exc:  # the stop goes on without it
                log.error("last audit checkpoint failed: %s", exc)

    async def send_close_markers(self, partitions: int) -> None:
        """Idle close: one control message to every contributions partition."""
        async with self._lock:
            await self._io.produce(self._io.encoder.close_markers(partitions))
            self.closed_since_input = True
            log.warning(
                "idle close of every KPI window; late events so far (lineage stage): "
                "%d after eviction",
                self.lineage.late_after_eviction,
            )


class KpiRunner:
    """Runs the commit protocol of the KPI stage (checkpointed); one per worker process.

    Args:
        io: producing, flushing and the assignment.
        stage: the KPI stage, ``store`` its state and ``sink`` its ClickHouse sink.
        current_interval_s: how often current KPI values are published.
        checkpoint_interval_s: how often the KPI state is written and its input acked.
        checkpoint_max_contributions: a checkpoint is also taken once this many
            contributions wait for one. A snapshot carries the rows staged since the
            last (``stages.kpi``), about 650 bytes each: a backlog read at full speed
            staged 7,000 in 5 s, and its snapshot (4.7 MB) exceeded the producer's
            request size and crashed the worker.
        rebalancing: whether a rebalance waits for unacknowledged messages.
        clock: monotonic seconds (pacing).
    """

    def __init__(
        self,
        *,
        io: WorkerIO,
        stage: KpiStage,
        store: PartitionedStore,
        sink: SinkFlusher,
        current_interval_s: float = 10.0,
        checkpoint_interval_s: float = 5.0,
        checkpoint_max_contributions: int = 2_000,
        rebalancing: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._io = io
        self.kpi = stage
        self._checkpoint_max = checkpoint_max_contributions
        self._kpi_store = store
        self._kpi_sink = sink
        self._current_interval_s = current_interval_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._rebalancing = rebalancing
        self._clock = clock
        self._kpi_lock = asyncio.Lock()
        self._kpi_held: list[tuple[Sequence[Any], Callable[[Any], Any]]] = []
        self._last_current_s = self._last_checkpoint_s = clock()
        self._kpi_assignment: frozenset[Any] | None = None
        self.last_batch_s = self._last_current_s
        """When the last batch of contributions was processed (``clock`` seconds)."""
        self.redelivered = 0
        """Contributions skipped because their offsets were already applied."""

    async def kpi_batch(self, events: Sequence[Any], ack: Callable[[Any], Any]) -> None:
        """Runs one batch of contributions (steps 1-3); acks it at the next checkpoint."""
        async with self._kpi_lock:
            self._kpi_check_assignment()
            ready = (self._kpi_assignment or frozenset()) - self._io.unsettled()
            events, messages = owned_events(events, ready)
            if not events:
                return
            started = time.perf_counter()
            self.kpi.floors = {
                tp[1]: offset
                for tp, offset in self._io.committed().items()
                if tp[0] == self.kpi.topic and offset is not None and offset >= 0
            }
            batch = KpiBatch()
            for i in range(0, len(messages), _SLICE):
                part = self.kpi.process(messages[i : i + _SLICE])
                batch.kpis += part.kpis
                batch.breaches += part.breaches
                batch.dead_letters += part.dead_letters
                batch.closed += part.closed
                batch.redelivered += part.redelivered
                await asyncio.sleep(0)  # see _SLICE
            await self._publish_kpis(batch)
            if batch.dead_letters:
                log.warning(
                    "%d KPI contributions reached closed windows (dead-lettered as "
                    "LATE_AFTER_WINDOW_CLOSED); so far by window size: %s",
                    len(batch.dead_letters),
                    self.kpi.too_late(),
                )
            if batch.closed:
                log.warning(
                    "idle close applied; late KPI contributions so far by window size: %s",
                    self.kpi.too_late(),
                )
            self.redelivered += batch.redelivered
            self._kpi_held.append((events, ack))
            await self._kpi_due()
            self.last_batch_s = self._clock()
            if self._io.telemetry is not None:
                self._io.telemetry.batch_done("kpi", time.perf_counter() - started, messages)

    async def kpi_tick(self) -> None:
        """Timer: publishes current values and checkpoints when no batch comes to do it."""
        if self._kpi_lock.locked():
            return  # a batch is running; it does what is due (a checkpoint too) at its end
        async with self._kpi_lock:
            if self._kpi_held and self._rebalancing():
                # Faust waits for every message to be acknowledged before it hands the
                # partitions over: checkpoint the state that goes with them now.
                await self._kpi_checkpoint()
            self._kpi_check_assignment()
            await self._kpi_due()

    async def stop(self) -> int:
        """Graceful stop: checkpoints what was processed, then takes no other batch.

        Returns how many contributions the checkpoint acknowledged. The lock is kept,
        as in ``LineageRunner.stop``.
        """
        await self._kpi_lock.acquire()
        held = self.kpi_unacknowledged
        if held:
            await self._kpi_checkpoint()
        return held

    @property
    def kpi_unacknowledged(self) -> int:
        """Contributions processed but not yet acknowledged (until the next checkpoint)."""
        return sum(len(events) for events, _ in self._kpi_held)

    def _kpi_check_assignment(self) -> None:
        assignment = self._io.assignment()
        if assignment == self._kpi_assignment:
            return
        if self._kpi_held:
            # Not expected: kpi_tick checkpoints as soon as a rebalance starts. The
            # staged state is dropped with its batches, never acknowledged, so they are
            # delivered again onto the last snapshot.
            log.warning(
                "assignment changed with %d contributions not checkpointed: dropping them",
                self.kpi_unacknowledged,
            )
            self._kpi_held.clear()
        self.kpi.discard()
        self._kpi_assignment = assignment

    async def _kpi_due(self) -> None:
        now = self._clock()
        if now - self._last_current_s >= self._current_interval_s:
            self._last_current_s = now
            await self._publish_kpis(self.kpi.emit_current())
        if self._kpi_held and (
            now - self._last_checkpoint_s >= self._checkpoint_interval_s
            or self.kpi_unacknowledged >= self._checkpoint_max
            or self._rebalancing()
        ):
            await self._kpi_checkpoint()

    async def _kpi_checkpoint(self) -> None:
        if self._io.assignment() != self._kpi_assignment:
            # Its partitions may be another worker's now, which may already have
            # restored and moved on: state written now would land after the new
            # owner's in their changelog. Dropped; the new owner reads the batches.
            self._kpi_check_assignment()
            return
        await self._io.write_state(self._kpi_store, self.kpi.take_writes())
        held, self._kpi_held = self._kpi_held, []
        for events, ack in held:
            for event in events:
                await ack(event)
        self._last_checkpoint_s = self._clock()

    async def _publish_kpis(self, batch: KpiBatch) -> None:
        if not (batch.kpis or batch.breaches or batch.dead_letters):
            return
        sink = self._kpi_sink.sink
        outputs: list[Output] = [*batch.kpis, *batch.breaches, *batch.dead_letters]
        for record in outputs:
            sink.add(record)
        refused = await self._kpi_sink.flush()
        letters = batch.dead_letters + refused
        if letters and self._io.telemetry is not None:
            self._io.telemetry.dead_letters("kpi", (d.reason for d in letters))
        messages = self._io.encoder.breaches(batch.breaches)
        messages += self._io.encoder.dead_letters(letters)
        for i in range(0, len(batch.kpis), _SLICE):
            messages += self._io.encoder.kpis(batch.kpis[i : i + _SLICE])
            await asyncio.sleep(0)  # see _SLICE
        await self._io.produce(messages)
