"""The KPI stage of the live worker, reading the contributions topic.

Per contributions partition, one ``KpiAggregator``, one ``BreachEvaluator`` and one
watermark per *upstream* input partition, taken from the watermark records the lineage
stages send to every contributions partition after the contributions they cover: a
window closes only once every upstream partition (idle ones left out) has passed its
end, with one worker or several. Contributions that still reach a closed window become
LATE_AFTER_WINDOW_CLOSED dead letters. For each contribution it retracts the revision
*it* applied last for that lineage row (kept in its own row table) and adds the new one;
an older revision, or the same revision with the same hash, is a redelivery and is
ignored (the same revision with another hash is the lineage stage's last batch
recomputed after a crash, and replaces it). Close markers close every window (idle
close). Current values come from ``emit_current``, paced by the caller. At each
checkpoint (``take_writes``; the worker takes one every few seconds, not every batch)
the aggregator, evaluator and upstream watermarks of every touched partition are
snapshotted (``streams.core.kpi.snapshot``: versioned, schema-validated data, never a
pickle), with the offsets applied (``AppliedOffsets``: ranges, so a gap in
delivery is applied when it comes) and the rows the batch staged, into the snapshot
table; on reassignment they are loaded from it. The rows ride in the snapshot because a
new owner can restore a changelog that holds the snapshot and not yet every row written
after it: in a live run the old owner's rows took 400 ms to reach the changelog, after
the partition had been handed over, and the new owner, given later revisions of rows it
did not find, counted both the old and the new one. A contribution is skipped as
applied only when its own offset is recorded. The contributions log replayed from the
last committed offset (never past the snapshot: offsets are committed only after it)
onto the last snapshot yields the same final outputs again: per-record processing does
not depend on batch boundaries, so recovery is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.codec import Codec
from schemas.records import (
    Breach,
    DeadLetter,
    KpiValue,
    LineageRecord,
)
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.breach import BreachEvaluator
from streams.core.kpi.snapshot import (
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    load_snapshot,
    snapshot_document,
    validate_document,
)
from streams.core.kpi.step import KpiStep
from streams.core.lineage.store import RESERVED_PREFIX
from streams.core.watermarks import WatermarkTracker
from streams.runtime.applied import AppliedOffsets
from streams.runtime.legacy_snapshot import (
    LegacySnapshotError,
    is_legacy_snapshot,
    legacy_document,
)
from streams.runtime.outputs import (
    CONTROL_CLOSE,
    CONTROL_HEADER,
    CONTROL_WATERMARK,
    InputMessage,
    lineage_key,
    parse_watermark,
)
from streams.runtime.staged_store import StagedMapping, StagedWrite

__all__ = ["KpiBatch", "KpiStage"]

log = logging.getLogger(__name__)


_SNAPSHOT = RESERVED_PREFIX + "snapshot:"
"""Key prefix of snapshots: reserved, as no lineage key (a JSON array) starts with it."""


@dataclass(slots=True)
class KpiBatch:
    """What one batch of contributions produced."""

    kpis: list[KpiValue] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    """Contributions that reached closed windows (LATE_AFTER_WINDOW_CLOSED)."""
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    """Messages whose offsets were already applied (only the row table is repaired)."""
    closed: int = 0
    """Idle-close markers applied."""


@dataclass(slots=True)
class _KpiPartition:
    step: KpiStep
    upstream: WatermarkTracker
    """One source per upstream input partition, fed by watermark records."""
    applied: AppliedOffsets
    """The contributions in the aggregator, by offset (a gap in delivery is filled later)."""
    held: dict[int, InputMessage] = field(default_factory=dict)
    """Control messages delivered beyond a gap, by offset: a watermark or close marker
    vouches for every contribution before it, so it waits until they are applied."""
    journal: dict[str, bytes] = field(default_factory=dict)
    """The rows staged since the partition's last snapshot, which the next one carries."""

    @property
    def aggregator(self) -> KpiAggregator:
        return self.step.aggregator


class KpiStage:
    """Windowed KPIs and breaches per contributions partition; see the module docstring.

    Args:
        codec: decodes contributions (LineageRecord) and encodes the rows kept.
        rows: the latest revision applied per lineage row (staged until commit).
        snapshots: a snapshot of aggregator, evaluator, upstream watermarks, applied
            offsets and recent rows per partition (staged until commit); the same table
            as ``rows`` under other keys.
        new_aggregator: builds an empty aggregator.
        new_breaches: builds an empty breach evaluator, or None.
        upstream_partitions: how many input partitions the lineage stages read; a
            window closes once each of them (idle ones left out) has passed its end.
        topic: the contributions topic (names partitions in log messages).
    """

    def __init__(
        self,
        codec: Codec,
        rows: StagedMapping,
        snapshots: StagedMapping,
        new_aggregator: Callable[[], KpiAggregator],
        new_breaches: Callable[[], BreachEvaluator | None],
        upstream_partitions: int = 1,
        topic: str = "contributions",
    ) -> None:
        self._codec = codec
        self._topic = topic
        self.rows = rows
        self.snapshots = snapshots
        self._new_aggregator = new_aggregator
        self._new_breaches = new_breaches
        self._upstream = upstream_partitions
        self._parts: dict[int, _KpiPartition] = {}
        self._touched: set[int] = set()
        self.floors: dict[int, int] = {}
        """Per partition, its committed offset (set by the caller before ``process``):
        a watermark or close marker also waits for offsets from it on (``held``)."""

    @property
    def topic(self) -> str:
        """The contributions topic."""
        return self._topic

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
            source = f"{self._topic}[{partition}]"
            raw = self.snapshots.get(_SNAPSHOT + str(partition))
            if raw is not None:
                part = self._restore(raw, source)
                # The rows the snapshot's batch wrote after it may be missing from the
                # table (see the module docstring): staged again, and carried by the
                # next snapshot until written after one.
                self.rows.use_partition(partition)
                for key, value in part.journal.items():
                    self.rows[key] = value
                self.rows.use_partition(None)
            else:
                part = _KpiPartition(
                    KpiStep(self._new_aggregator(), self._new_breaches()),
                    self._new_upstream(),
                    AppliedOffsets(source),
                )
            self._parts[partition] = part
        return part

    def _restore(self, raw: bytes, source: str) -> _KpiPartition:
        """A partition from its snapshot (format 1, or a pickle of a previous release).

        Raises:
            SnapshotError: the snapshot cannot be restored (the message says why).
        """
        try:
            if is_legacy_snapshot(raw):
                document = legacy_document(raw, self._new_upstream().state())
                snapshot = validate_document(document)
                log.info(
                    "%s: read the pickled KPI snapshot of a previous release as data; "
                    "the next checkpoint writes it in format 1",
                    source,
                )
            else:
                snapshot = decode_snapshot(raw)
            state = load_snapshot(snapshot, self._new_aggregator, self._new_breaches)
        except (SnapshotError, LegacySnapshotError) as exc:
            raise SnapshotError(f"{source}: {exc}") from None
        return _KpiPartition(
            KpiStep(state.aggregator, state.breaches),
            state.upstream,
            AppliedOffsets(source, state.applied),
            journal=state.rows,
        )

    def process(self, messages: Sequence[InputMessage]) -> KpiBatch:
        """Applies contributions and control messages in log order."""
        out = KpiBatch()
        for message in messages:
            part = self._part(message.partition)
            self._touched.add(message.partition)
            # An offset the snapshot records as applied is already in the aggregator:
            # only the row table is repaired (a crash may have lost row writes that
            # followed the snapshot in the changelog).
            replayed = message.offset in part.applied
            control = message.header(CONTROL_HEADER)
            if control in (CONTROL_WATERMARK, CONTROL_CLOSE):
                if replayed:
                    out.redelivered += 1
                elif part.applied.missing_below(message.offset, self.floors.get(message.partition)):
                    # Faust delivered it before contributions it vouches for (a gap):
                    # applied once they are, so that no window closes ahead of them.
                    part.held[message.offset] = message
                else:
                    self._control(part, message, out)
                continue
            if replayed:
                out.redelivered += 1
            else:
                part.applied.add(message.offset)
            if not message.value:
                continue
            new = self._codec.decode(message.value, LineageRecord)
            key = lineage_key(new)
            raw_old = self.rows.get(key)
            old = None if raw_old is None else self._codec.decode(raw_old, LineageRecord)
            if old is not None and (
                old.revision > new.revision
                or (
                    old.revision == new.revision
                    and (
                        old.record_hash == new.record_hash
                        or len(old.event_ids) > len(new.event_ids)
                    )
                )
            ):
                out.duplicates += 1
                continue
            # The same revision with other content is not a duplicate: the lineage stage
            # re-ran its last batch after a crash or a rebalance (its state never saw the
            # first run), cut differently, so that revision now holds more events. It
            # replaces the one applied, as a newer revision would. The first run's,
            # delivered after it (beyond a gap, out of log order), holds fewer events
            # and is ignored: arrival order must not decide which of the two counts.
            self.rows.use_partition(message.partition)
            self.rows[key] = part.journal[key] = message.value
            if replayed:
                continue
            out.applied += 1
            part.step.count(old, new, out)
            part.step.take_late(out, _origin(message))
        for partition in sorted(self._touched):
            self._release_held(partition, out)
        return out

    def _control(self, part: _KpiPartition, message: InputMessage, out: KpiBatch) -> None:
        """Applies a watermark record or a close marker (its offset becomes applied)."""
        part.applied.add(message.offset)
        if message.header(CONTROL_HEADER) == CONTROL_WATERMARK:
            self._watermark(part, message, out)
        else:
            part.step.close_all(out)
            part.step.take_late(out, _origin(message))
            out.closed += 1

    def _release_held(self, partition: int, out: KpiBatch) -> None:
        """Applies held control messages, in log order, once no gap is left below them."""
        part = self._parts[partition]
        for offset in sorted(part.held):
            if offset in part.applied:
                del part.held[offset]  # applied meanwhile (a redelivery)
            elif part.applied.missing_below(offset, self.floors.get(partition)):
                return
            else:
                self._control(part, part.held.pop(offset), out)

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

    def state_size(self) -> dict[str, int]:
        """Panes, emitted-window entries and series held, over loaded partitions."""
        total: dict[str, int] = {}
        for part in self._parts.values():
            for kind, n in part.aggregator.state_size().items():
                total[kind] = total.get(kind, 0) + n
        return total

    def open_breaches(self) -> dict[tuple[str, str], int]:
        """Breaches open now by ``(severity, rule id)``, over loaded partitions."""
        total: dict[tuple[str, str], int] = {}
        for part in self._parts.values():
            if part.step.breaches is None:
                continue
            for (severity, rule), n in part.step.breaches.open_breaches().items():
                key = (str(severity), rule)
                total[key] = total.get(key, 0) + n
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
            self.snapshots[_SNAPSHOT + str(partition)] = encode_snapshot(
                snapshot_document(
                    part.step.aggregator,
                    part.step.breaches,
                    part.upstream,
                    part.applied.ranges,
                    tuple(part.journal.items()),
                )
            )
            part.journal.clear()
        self.snapshots.use_partition(None)
        self.rows.use_partition(None)
        self._touched.clear()


def _origin(message: InputMessage) -> tuple[str, int, int]:
    return (message.topic, message.partition, message.offset)
