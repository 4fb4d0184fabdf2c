"""The lineage stage of the live worker, reading the input topics (co-partitioned by study).

It decodes and validates each message (a refusal becomes a dead letter with the
original bytes), joins the accepted events per input partition (study state in a
:class:`StagedMapping`), expires studies past retention, and returns lineage
revisions, review candidates, dead letters and the KPI contributions (each new
revision, repartitioned by algorithm and finding).

Each message is applied once: the offsets applied of every input topic-partition
(:class:`~streams.runtime.applied.AppliedOffsets`) are kept in the state table, in that
partition, staged after the study states they describe. A message whose own offset is
recorded is a redelivery and is skipped whole (no event row, no join, no dead letter);
any other is applied, whatever was delivered before it, so a gap in delivery is filled
when its messages come and re-reading a partition from an earlier offset changes
nothing.

Event time is kept per *source*, one input topic-partition each (DESIGN §5): an input
partition's watermark is the minimum over its three topics (idle ones left out), and
retention follows the minimum over the partitions this worker owns. The stage tells the
KPI stage each input partition's watermark (``watermark_updates``: whole hours, since
windows only change at hour boundaries, or "idle"), and names the sources that run
ahead of the others (``sources_ahead``) so that the worker pauses them while a backlog
is read: the partitions are then consumed in roughly event-time order, as Kafka
Streams' timestamp-synchronised processing does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.events import Event
from schemas.records import (
    DeadLetter,
    LineageRecord,
    ReviewCandidate,
)
from schemas.units import HOUR_MS
from sinks.clickhouse.rows import EventSource
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.join import LineageJoiner
from streams.core.lineage.pseudonym import Pseudonymiser
from streams.core.lineage.step import LineageStep
from streams.core.lineage.store import RESERVED_PREFIX, MappingStudyStore
from streams.core.watermarks import WatermarkTracker, combine_watermarks
from streams.runtime.applied import AppliedOffsets
from streams.runtime.outputs import (
    InputMessage,
    dead_letter_for_message,
)
from streams.runtime.staged_store import StagedMapping

__all__ = ["LineageBatch", "LineageStage", "applied_key"]


def applied_key(topic: str, partition: int) -> str:
    """The state key of a topic-partition's applied offsets (not a study key)."""
    return f"{RESERVED_PREFIX}applied:{topic}:{partition}"


@dataclass(slots=True)
class LineageBatch:
    """What one batch of input messages produced."""

    events: list[tuple[Event, EventSource]] = field(default_factory=list)
    lineage: list[LineageRecord] = field(default_factory=list)
    reviews: list[ReviewCandidate] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    redelivered: int = 0
    """Messages skipped because their offsets were already applied."""


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
        self._applied: dict[tuple[str, int], AppliedOffsets] = {}

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
        self._applied.clear()
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

    def applied(self, topic: str, partition: int) -> AppliedOffsets:
        """The offsets of ``topic[partition]`` applied to the state (loaded on first use)."""
        source = (topic, partition)
        offsets = self._applied.get(source)
        if offsets is None:
            name = f"{topic}[{partition}]"
            raw = self.state.get(applied_key(topic, partition))
            offsets = AppliedOffsets(name) if raw is None else AppliedOffsets.from_bytes(name, raw)
            self._applied[source] = offsets
        return offsets

    def process(self, messages: Sequence[InputMessage]) -> LineageBatch:
        """Processes one batch; state changes stay staged in ``state``."""
        out = LineageBatch()
        by_partition: dict[int, list[Event]] = defaultdict(list)
        now_ms = self._clock_ms()
        decode = self._codec.decode_event
        touched: set[tuple[str, int]] = set()
        for message in messages:
            applied = self.applied(message.topic, message.partition)
            if message.offset in applied:
                out.redelivered += 1
                continue
            applied.add(message.offset)
            touched.add((message.topic, message.partition))
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
        for topic, partition in sorted(touched):
            self.state.use_partition(partition)
            self.state.set_last(
                applied_key(topic, partition), self._applied[(topic, partition)].to_bytes()
            )
        self.state.use_partition(None)
        self.expire(out)
        return out

    def discard(self) -> None:
        """Forgets staged state and cached offsets (the batch failed; it is redelivered)."""
        self.state.discard()
        self.rebuild()

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
