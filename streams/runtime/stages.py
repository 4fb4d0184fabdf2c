"""The two stages of the live worker as plain objects: batches in, outputs as data.

The Faust agents (``streams.runtime.agents``) own consumers, producers, the sink and
commits; these classes decode messages, keep event time per source and state per
partition, and drive the core's own halves of a batch: ``LineageStep`` (join, review
candidates, retention) and ``KpiStep`` (windows, breaches, late contributions), the
same two the offline replay drives through ``GovernanceProcessor``. They need no
broker, so unit tests drive them directly.

**LineageStage** (input topics, co-partitioned by study): decodes and validates each
message (a refusal becomes a dead letter with the original bytes), joins the accepted
events per input partition (study state in a :class:`StagedMapping`), expires studies
past retention, and returns lineage revisions, review candidates, dead letters and the
KPI contributions (each new revision, repartitioned by algorithm and finding).

Event time is kept per *source*, one input topic-partition each (DESIGN §5): an input
partition's watermark is the minimum over its three topics (idle ones left out), and
retention follows the minimum over the partitions this worker owns. The stage tells the
KPI stage each input partition's watermark (``watermark_updates``: whole hours, since
windows only change at hour boundaries, or "idle"), and names the sources that run
ahead of the others (``sources_ahead``) so that the worker pauses them while a backlog
is read: the partitions are then consumed in roughly event-time order, as Kafka
Streams' timestamp-synchronised processing does.

**KpiStage** (contributions topic): per partition, one ``KpiAggregator``, one
``BreachEvaluator`` and one watermark per *upstream* input partition, taken from the
watermark records the lineage stages send to every contributions partition after the
contributions they cover: a window closes only once every upstream partition (idle
ones left out) has passed its end, with one worker or several. Contributions that
still reach a closed window become LATE_AFTER_WINDOW_CLOSED dead letters. For each
contribution it retracts the revision *it* applied last for that lineage row (kept in
its own row table) and adds the new one; a revision not newer than the one applied is
a redelivery and is ignored. Close markers close every window (idle close). Current
values come from ``emit_current``, paced by the caller. At each checkpoint
(``take_writes``; the worker takes one every few seconds, not every batch) the
aggregator, evaluator and upstream watermarks of every touched partition are
snapshotted (pickle), with the offsets applied (a contiguous prefix and any beyond a
gap in delivery), into the snapshot table; on reassignment they are loaded from it.
The contributions log replayed from the last committed offset (never past the
snapshot: offsets are committed only after it) onto the last snapshot yields the same
final outputs again: per-record processing does not depend on batch boundaries, so
recovery is deterministic.

Equality with replay holds for *final* results: the latest lineage revision per row,
the final value of every KPI window, the breaches and the dead letters. Intermediate
revisions depend on how the input was cut into batches (at most one revision per row
per batch), as they do in replay with its chunks.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.events import Event
from schemas.records import (
    Breach,
    DeadLetter,
    KpiValue,
    LineageRecord,
    ReviewCandidate,
)
from schemas.units import HOUR_MS
from sinks.clickhouse.rows import EventSource
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.breach import BreachEvaluator
from streams.core.kpi.step import KpiStep
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.join import LineageJoiner
from streams.core.lineage.pseudonym import Pseudonymiser
from streams.core.lineage.step import LineageStep
from streams.core.lineage.store import MappingStudyStore
from streams.core.watermarks import WatermarkTracker, combine_watermarks
from streams.runtime.outputs import (
    CONTROL_CLOSE,
    CONTROL_HEADER,
    CONTROL_WATERMARK,
    InputMessage,
    dead_letter_for_message,
    lineage_key,
    parse_watermark,
)
from streams.runtime.staged_store import StagedMapping, StagedWrite

__all__ = ["KpiBatch", "KpiStage", "LineageBatch", "LineageStage"]


@dataclass(slots=True)
class LineageBatch:
    """What one batch of input messages produced."""

    events: list[tuple[Event, EventSource]] = field(default_factory=list)
    lineage: list[LineageRecord] = field(default_factory=list)
    reviews: list[ReviewCandidate] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class LineageStage:
    """Decode, validate, join; see the module docstring.

    Args:
        config: the join's settings.
        allowed_lateness_ms: each source's watermark is its max event time minus this;
            retention follows their minimum, as in ``GovernanceProcessor``.
        codec: decodes inputs (with the value rules) and knows schema ids.
        state: where study states live (staged until the agent commits).
        pseudonymiser: removes direct identifiers from events kept for ``event_log``.
        clock_ms: wall clock for ``received_at_ms`` of dead letters.
        input_topics: the co-partitioned input topics; each partition of each is one
            source whose first event the partition's watermark waits for.
    """

    def __init__(
        self,
        config: LineageConfig,
        allowed_lateness_ms: int,
        codec: Codec,
        state: StagedMapping,
        pseudonymiser: Pseudonymiser,
        clock_ms: Callable[[], int],
        input_topics: Sequence[str] = (),
    ) -> None:
        self.state = state
        self.step = LineageStep(LineageJoiner(config, MappingStudyStore(state)))
        self._lateness = allowed_lateness_ms
        self._codec = codec
        self._pseudonymiser = pseudonymiser
        self._clock_ms = clock_ms
        self._topics = tuple(input_topics)
        self._partitions: dict[int, WatermarkTracker] = {}
        self._announced: dict[int, int | None] = {}

    @property
    def joiner(self) -> LineageJoiner:
        return self.step.joiner

    @property
    def late_after_eviction(self) -> int:
        """Events refused because their study had already expired."""
        return self.step.late_after_eviction

    def rebuild(self) -> None:
        """Re-reads the expiry index from the state (after a partition reassignment)."""
        self.state.forget_partitions()
        self.joiner.rebuild_index()

    def assign(self, partitions: Iterable[int]) -> None:
        """Keeps the watermarks of ``partitions`` (the input partitions owned now)."""
        owned = set(partitions)
        for p in [p for p in self._partitions if p not in owned]:
            del self._partitions[p]
            self._announced.pop(p, None)
        for p in owned:
            self._tracker(p)

    def _tracker(self, partition: int) -> WatermarkTracker:
        tracker = self._partitions.get(partition)
        if tracker is None:
            tracker = WatermarkTracker(self._lateness, self._topics)
            self._partitions[partition] = tracker
        return tracker

    # -- event time ------------------------------------------------------------------

    def mark_idle(self, topic: str, partition: int) -> None:
        """A source has nothing to deliver (caught up): it stops holding time back."""
        self._tracker(partition).mark_idle(topic)

    def is_idle(self, topic: str, partition: int) -> bool:
        tracker = self._partitions.get(partition)
        return tracker is not None and tracker.is_idle(topic)

    def partition_watermark(self, partition: int) -> int | None:
        """An input partition's watermark (None before every active source spoke)."""
        tracker = self._partitions.get(partition)
        return None if tracker is None else tracker.watermark_ms

    def _partition_idle(self, partition: int) -> bool:
        tracker = self._partitions[partition]
        return bool(tracker.sources) and all(tracker.is_idle(s) for s in tracker.sources)

    @property
    def watermark_ms(self) -> int | None:
        """What retention follows: the minimum over the owned partitions not idle.

        With every owned partition idle, the greatest of their watermarks (the rule of
        ``WatermarkTracker``, one level up: ``combine_watermarks``).
        """
        return combine_watermarks(
            (tracker.watermark_ms, self._partition_idle(p))
            for p, tracker in self._partitions.items()
        )

    def watermark_updates(self) -> list[tuple[int, int | None]]:
        """``(input partition, watermark or None for idle)`` not yet told downstream.

        Watermarks are cut to whole hours (windows only change at hour boundaries), so
        the KPI stages hear from each partition about once per hour of event time.
        """
        updates: list[tuple[int, int | None]] = []
        for p in sorted(self._partitions):
            if self._partition_idle(p):
                value: int | None = None
            else:
                wm = self._partitions[p].watermark_ms
                if wm is None:
                    continue
                value = wm - wm % HOUR_MS
            if p not in self._announced or self._announced[p] != value:
                self._announced[p] = value
                updates.append((p, value))
        return updates

    def sources_ahead(self, skew_ms: int) -> set[tuple[str, int]]:
        """Sources whose watermark runs more than ``skew_ms`` ahead of the slowest.

        The slowest is the least watermark of the active sources that have delivered;
        the worker pauses the sources returned (and resumes the others) so that a
        backlog is read in roughly event-time order and state stays bounded.
        """
        marks = [
            (wm, topic, p)
            for p, tracker in self._partitions.items()
            for topic, wm in tracker.sources.items()
            if wm is not None and not tracker.is_idle(topic)
        ]
        if not marks:
            return set()
        limit = min(wm for wm, _, _ in marks) + skew_ms
        return {(topic, p) for wm, topic, p in marks if wm > limit}

    # -- batches -----------------------------------------------------------------------

    def process(self, messages: Sequence[InputMessage]) -> LineageBatch:
        """Processes one batch; state changes stay staged in ``state``."""
        out = LineageBatch()
        by_partition: dict[int, list[Event]] = defaultdict(list)
        now_ms = self._clock_ms()
        decode = self._codec.decode_event
        for message in messages:
            try:
                if message.value is None:
                    raise _empty()
                event = decode(message.value, message.headers or None)
            except DecodeError as exc:
                out.dead_letters.append(dead_letter_for_message(message, exc, now_ms))
                continue
            by_partition[message.partition].append(event)
            self._tracker(message.partition).observe(message.topic, event.occurred_at_ms)
            out.events.append(
                (
                    self._pseudonymiser.pseudonymise_event(event),
                    EventSource(
                        message.topic, message.partition, message.offset, _schema_id(message)
                    ),
                )
            )
        for partition in sorted(by_partition):
            self.state.use_partition(partition)
            self.step.join(by_partition[partition], out)
        self.state.use_partition(None)
        self.expire(out)
        return out

    def expire(self, out: LineageBatch) -> None:
        """Expires studies past retention at the current watermark, into ``out``."""
        self.step.advance(self.watermark_ms, out)


def _schema_id(message: InputMessage) -> int | None:
    value = message.value
    if value and len(value) >= 5 and value[0] == 0:
        return int.from_bytes(value[1:5], "big")
    return None


def _empty() -> DecodeError:
    from schemas.errors import UndecodableError

    return UndecodableError("the message has no value (a tombstone)")


_SNAPSHOT = "\x00snapshot:"
"""Key prefix of snapshots; lineage keys are JSON arrays and never start with NUL."""


@dataclass(slots=True)
class KpiBatch:
    """What one batch of contributions produced."""

    kpis: list[KpiValue] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    """Contributions that reached closed windows (LATE_AFTER_WINDOW_CLOSED)."""
    applied: int = 0
    duplicates: int = 0
    closed: int = 0
    """Idle-close markers applied."""


@dataclass(slots=True)
class _KpiPartition:
    step: KpiStep
    upstream: WatermarkTracker
    """One source per upstream input partition, fed by watermark records."""
    offset: int | None = None
    """Every offset up to this one is applied (None: nothing yet)."""
    above: set[int] = field(default_factory=set)
    """Offsets applied beyond a gap in delivery (the gap may still be delivered)."""

    @property
    def aggregator(self) -> KpiAggregator:
        return self.step.aggregator

    def applied(self, offset: int) -> bool:
        """Whether ``offset`` is already in the aggregator (its redelivery changes nothing)."""
        return (self.offset is not None and offset <= self.offset) or offset in self.above

    def mark_applied(self, offset: int) -> None:
        # Delivery can skip offsets (after some rebalances Faust starts beyond the
        # committed offset; the stall guard later re-reads the gap): an offset counts as
        # applied only when it was, never because a later one was.
        if self.offset is None:
            self.offset = offset  # a new partition starts where its delivery starts
        elif offset == self.offset + 1:
            self.offset = offset
            while self.offset + 1 in self.above:
                self.offset += 1
                self.above.discard(self.offset)
        else:
            self.above.add(offset)


class KpiStage:
    """Windowed KPIs and breaches per contributions partition; see the module docstring.

    Args:
        codec: decodes contributions (LineageRecord) and encodes the rows kept.
        rows: the latest revision applied per lineage row (staged until commit).
        snapshots: pickled aggregator, evaluator and last applied offset per partition
            (staged until commit); the same table as ``rows`` under other keys.
        new_aggregator: builds an empty aggregator.
        new_breaches: builds an empty breach evaluator, or None.
        upstream_partitions: how many input partitions the lineage stages read; a
            window closes once each of them (idle ones left out) has passed its end.
    """

    def __init__(
        self,
        codec: Codec,
        rows: StagedMapping,
        snapshots: StagedMapping,
        new_aggregator: Callable[[], KpiAggregator],
        new_breaches: Callable[[], BreachEvaluator | None],
        upstream_partitions: int = 1,
    ) -> None:
        self._codec = codec
        self.rows = rows
        self.snapshots = snapshots
        self._new_aggregator = new_aggregator
        self._new_breaches = new_breaches
        self._upstream = upstream_partitions
        self._parts: dict[int, _KpiPartition] = {}
        self._touched: set[int] = set()

    def reset(self) -> None:
        """Forgets loaded partitions; they are reloaded from snapshots (after a rebalance)."""
        self._parts.clear()
        self.rows.forget_partitions()
        self.snapshots.forget_partitions()

    def _new_upstream(self) -> WatermarkTracker:
        # Watermark records carry watermarks already: no lateness to subtract.
        return WatermarkTracker(0, range(self._upstream))

    def _part(self, partition: int) -> _KpiPartition:
        part = self._parts.get(partition)
        if part is None:
            raw = self.snapshots.get(_SNAPSHOT + str(partition))
            if raw is not None:
                snapshot = pickle.loads(raw)
                above: set[int] = set()
                if len(snapshot) == 3:  # written before upstream watermarks existed
                    aggregator, breaches, offset = snapshot
                    upstream = self._new_upstream()
                elif len(snapshot) == 4:
                    aggregator, breaches, upstream, offset = snapshot
                else:
                    aggregator, breaches, upstream, offset, above = snapshot
                part = _KpiPartition(KpiStep(aggregator, breaches), upstream, offset, above)
            else:
                part = _KpiPartition(
                    KpiStep(self._new_aggregator(), self._new_breaches()), self._new_upstream()
                )
            self._parts[partition] = part
        return part

    def process(self, messages: Sequence[InputMessage]) -> KpiBatch:
        """Applies contributions and control messages in log order."""
        out = KpiBatch()
        for message in messages:
            part = self._part(message.partition)
            self._touched.add(message.partition)
            # An offset the snapshot records as applied is already in the aggregator:
            # only the row table is repaired (a crash may have lost row writes that
            # followed the snapshot in the changelog).
            replayed = part.applied(message.offset)
            if not replayed:
                part.mark_applied(message.offset)
            control = message.header(CONTROL_HEADER)
            if control == CONTROL_WATERMARK:
                if not replayed:
                    self._watermark(part, message, out)
                continue
            if control == CONTROL_CLOSE:
                if not replayed:
                    part.step.close_all(out)
                    part.step.take_late(out, _origin(message))
                    out.closed += 1
                continue
            if not message.value:
                continue
            new = self._codec.decode(message.value, LineageRecord)
            key = lineage_key(new)
            raw_old = self.rows.get(key)
            old = None if raw_old is None else self._codec.decode(raw_old, LineageRecord)
            if old is not None and old.revision >= new.revision:
                out.duplicates += 1
                continue
            self.rows.use_partition(message.partition)
            self.rows[key] = message.value
            if replayed:
                continue
            out.applied += 1
            part.step.count(old, new, out)
            part.step.take_late(out, _origin(message))
        return out

    def _watermark(self, part: _KpiPartition, message: InputMessage, out: KpiBatch) -> None:
        upstream, watermark = parse_watermark(message)
        if watermark is None:
            part.upstream.mark_idle(upstream)
        else:
            part.upstream.observe(upstream, watermark)
        combined = part.upstream.watermark_ms
        if combined is not None:
            part.step.advance(combined, out)
            part.step.take_late(out, _origin(message))

    def too_late(self) -> dict[str, int]:
        """Contributions that reached closed windows, by window size, over loaded partitions."""
        total: dict[str, int] = {}
        for part in self._parts.values():
            for size, count in part.aggregator.too_late.items():
                total[size] = total.get(size, 0) + count
        return total

    def watermarks(self) -> dict[int, int | None]:
        """The KPI watermark of each loaded contributions partition."""
        return {p: part.upstream.watermark_ms for p, part in sorted(self._parts.items())}

    def emit_current(self) -> KpiBatch:
        """Current values (and revisions of final windows) of every loaded partition.

        The worker calls it on processing time (``current_interval_s``); the windows'
        final values never depend on when, only on the contributions log.
        """
        out = KpiBatch()
        for partition in sorted(self._parts):
            if self._parts[partition].step.emit_current(out):
                self._touched.add(partition)  # what was emitted is part of the state
        return out

    def discard(self) -> None:
        """Forgets staged state changes and loaded partitions (their input is redelivered)."""
        self.rows.discard()
        self.snapshots.discard()
        self._touched.clear()
        self.reset()

    def take_writes(self) -> list[StagedWrite]:
        """Stages snapshots, then returns every state write of the batch, snapshots first.

        Snapshots go first: both live in one table, so per partition the changelog
        holds them in this order, and a crash that loses a suffix of the writes loses
        only row writes, which the replay of the batch repairs.
        """
        self.stage_snapshots()
        return self.snapshots.take_writes() + self.rows.take_writes()

    def stage_snapshots(self) -> None:
        """Stages a snapshot of every partition touched since the last call."""
        for partition in sorted(self._touched):
            part = self._parts[partition]
            self.snapshots.use_partition(partition)
            self.snapshots[_SNAPSHOT + str(partition)] = pickle.dumps(
                (part.step.aggregator, part.step.breaches, part.upstream, part.offset, part.above),
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        self.snapshots.use_partition(None)
        self.rows.use_partition(None)
        self._touched.clear()


def _origin(message: InputMessage) -> tuple[str, int, int]:
    return (message.topic, message.partition, message.offset)
