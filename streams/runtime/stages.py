"""The two stages of the live worker as plain objects: batches in, outputs as data.

The Faust agents (``streams.runtime.agents``) own consumers, producers, the sink and
commits; these classes own the pure core (the same ``LineageJoiner``,
``review_candidate_for``, ``KpiAggregator`` and ``BreachEvaluator`` the offline replay
drives through ``GovernanceProcessor``) and decide what each batch produces. They need
no broker, so unit tests drive them directly.

**LineageStage** (input topics, co-partitioned by study): decodes and validates each
message (a refusal becomes a dead letter with the original bytes), joins the accepted
events per input partition (study state in a :class:`StagedMapping`), expires studies
past retention, and returns lineage revisions, review candidates, dead letters and the
KPI contributions (each new revision, repartitioned by algorithm and finding).

**KpiStage** (contributions topic): per partition, one ``KpiAggregator`` and one
``BreachEvaluator``. For each contribution it retracts the revision *it* applied last
for that lineage row (kept in its own row table) and adds the new one; a revision not
newer than the one applied is a redelivery and is ignored. Control messages close every
window (idle close). Current values come from ``emit_current``, paced by the caller.
At each checkpoint (``take_writes``; the worker takes one every few seconds, not every
batch) the aggregator and evaluator of every touched partition are snapshotted
(pickle), with the last offset applied, into the snapshot table; on reassignment they
are loaded from it. The contributions log replayed from the last committed offset (never
past the snapshot: offsets are committed only after it) onto the last snapshot yields
the same final outputs again: per-record processing does not depend on batch
boundaries, so recovery is deterministic.

Equality with replay holds for *final* results: the latest lineage revision per row,
the final value of every KPI window, the breaches and the dead letters. Intermediate
revisions depend on how the input was cut into batches (at most one revision per row
per batch), as they do in replay with its chunks.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.events import Event
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from sinks.clickhouse.rows import EventSource
from streams.core.aggregator import KpiAggregator
from streams.core.breach import BreachEvaluator
from streams.core.config import LineageConfig
from streams.core.lineage import LineageJoiner
from streams.core.lineage_output import JoinOutput
from streams.core.lineage_store import MappingStudyStore
from streams.core.pipeline import review_candidate_for
from streams.core.pseudonym import Pseudonymiser
from streams.runtime.outputs import (
    CONTROL_CLOSE,
    CONTROL_HEADER,
    InputMessage,
    dead_letter_for_message,
    lineage_key,
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
        allowed_lateness_ms: retention is measured against max event time minus this
            (the KPI watermark), as in ``GovernanceProcessor``.
        codec: decodes inputs (with the value rules) and knows schema ids.
        state: where study states live (staged until the agent commits).
        pseudonymiser: removes direct identifiers from events kept for ``event_log``.
        clock_ms: wall clock for ``received_at_ms`` of dead letters.
    """

    def __init__(
        self,
        config: LineageConfig,
        allowed_lateness_ms: int,
        codec: Codec,
        state: StagedMapping,
        pseudonymiser: Pseudonymiser,
        clock_ms: Callable[[], int],
    ) -> None:
        self.state = state
        self.joiner = LineageJoiner(config, MappingStudyStore(state))
        self._lateness = allowed_lateness_ms
        self._codec = codec
        self._pseudonymiser = pseudonymiser
        self._clock_ms = clock_ms
        self._max_event_ms: int | None = None

    def rebuild(self) -> None:
        """Re-reads the expiry index from the state (after a partition reassignment)."""
        self.state.forget_partitions()
        self.joiner.rebuild_index()

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
            out.events.append(
                (
                    self._pseudonymiser.pseudonymise_event(event),
                    EventSource(
                        message.topic, message.partition, message.offset, _schema_id(message)
                    ),
                )
            )
        latest = self._max_event_ms
        for partition in sorted(by_partition):
            events = by_partition[partition]
            self.state.use_partition(partition)
            self._take(self.joiner.apply_many(events), out)
            top = max(e.occurred_at_ms for e in events)
            latest = top if latest is None or top > latest else latest
        self.state.use_partition(None)
        self._max_event_ms = latest
        if latest is not None:
            self._take(self.joiner.advance(latest - self._lateness), out)
        return out

    def _take(self, joined: JoinOutput, out: LineageBatch) -> None:
        out.dead_letters.extend(joined.dead_letters)
        for revision in joined.revisions:
            out.lineage.append(revision.new)
            review = review_candidate_for(revision)
            if review is not None:
                out.reviews.append(review)


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
    applied: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class _KpiPartition:
    aggregator: KpiAggregator
    breaches: BreachEvaluator | None
    offset: int = -1
    """The last contributions offset applied to ``aggregator``."""


class KpiStage:
    """Windowed KPIs and breaches per contributions partition; see the module docstring.

    Args:
        codec: decodes contributions (LineageRecord) and encodes the rows kept.
        rows: the latest revision applied per lineage row (staged until commit).
        snapshots: pickled aggregator, evaluator and last applied offset per partition
            (staged until commit); the same table as ``rows`` under other keys.
        new_aggregator: builds an empty aggregator.
        new_breaches: builds an empty breach evaluator, or None.
    """

    def __init__(
        self,
        codec: Codec,
        rows: StagedMapping,
        snapshots: StagedMapping,
        new_aggregator: Callable[[], KpiAggregator],
        new_breaches: Callable[[], BreachEvaluator | None],
    ) -> None:
        self._codec = codec
        self.rows = rows
        self.snapshots = snapshots
        self._new_aggregator = new_aggregator
        self._new_breaches = new_breaches
        self._parts: dict[int, _KpiPartition] = {}
        self._touched: set[int] = set()

    def reset(self) -> None:
        """Forgets loaded partitions; they are reloaded from snapshots (after a rebalance)."""
        self._parts.clear()
        self.rows.forget_partitions()
        self.snapshots.forget_partitions()

    def _part(self, partition: int) -> _KpiPartition:
        part = self._parts.get(partition)
        if part is None:
            raw = self.snapshots.get(_SNAPSHOT + str(partition))
            if raw is not None:
                aggregator, breaches, offset = pickle.loads(raw)
                part = _KpiPartition(aggregator, breaches, offset)
            else:
                part = _KpiPartition(self._new_aggregator(), self._new_breaches())
            self._parts[partition] = part
        return part

    def process(self, messages: Sequence[InputMessage]) -> KpiBatch:
        """Applies contributions and control messages in log order."""
        out = KpiBatch()
        for message in messages:
            part = self._part(message.partition)
            self._touched.add(message.partition)
            # At or before the snapshot's offset the aggregator already holds the
            # message: only the row table is repaired (a crash may have lost row writes
            # that followed the snapshot in the changelog).
            replayed = message.offset <= part.offset
            if not replayed:
                part.offset = message.offset
            if message.header(CONTROL_HEADER) == CONTROL_CLOSE:
                if not replayed:
                    self._emit(part, part.aggregator.close_all(), out)
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
            self._emit(part, part.aggregator.apply(old, new), out)
        return out

    def emit_current(self) -> KpiBatch:
        """Current values (and revisions of final windows) of every loaded partition.

        The worker calls it on processing time (``current_interval_s``); the windows'
        final values never depend on when, only on the contributions log.
        """
        out = KpiBatch()
        for partition in sorted(self._parts):
            part = self._parts[partition]
            values = part.aggregator.emit_current()
            if values:
                self._touched.add(partition)  # what was emitted is part of the state
                self._emit(part, values, out)
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
                (part.aggregator, part.breaches, part.offset), protocol=pickle.HIGHEST_PROTOCOL
            )
        self.snapshots.use_partition(None)
        self.rows.use_partition(None)
        self._touched.clear()

    @staticmethod
    def _emit(part: _KpiPartition, values: list[KpiValue], out: KpiBatch) -> None:
        if not values:
            return
        out.kpis.extend(values)
        if part.breaches is not None:
            out.breaches.extend(part.breaches.apply([v for v in values if v.final]))
