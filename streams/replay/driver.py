"""Offline replay: event files through the governance core into a sink.

``replay`` reads JSON Lines and Avro container files (``schemas.files``), merges them
by event time (each file in its own order), delivers the events through
``GovernanceProcessor`` in chunks, and at the end of input closes every KPI window as
final. Lineage still inside its retention stays as it is.

Each file is one *source* with its own watermark, and the processor's watermark is
their minimum: one file per source system (inference, alerts, reports) or one per
partition gives the same final lineage and KPIs as the same events in one file.

Bad input never stops a replay: a line or record that cannot be accepted becomes a dead
letter carrying its reason, its original bytes and where it came from (``source_topic``
= ``file:<path>``, ``source_offset`` = line or record number).

The steps, in order, and why:

1. Every file is read lazily and at once: the next event is always the one with the
   least event time among the files' next events (a k-way merge; ties go to the file
   named first), so the merged input is in roughly event-time order whatever the
   layout of the files. Rejected inputs go to the sink at once, accepted events are
   gathered into a chunk (``chunk_size`` events). When a file ends, it stops holding
   the watermark back.
2. A full chunk is joined as one batch (``GovernanceProcessor.process``): the core
   folds the events of a study together, so a chunk costs per study touched.
3. The accepted events themselves go to the sink when ``record_events`` is set (the
   audit ``event_log``; the sink replaces direct identifiers, DESIGN §8), then every
   output of the chunk.
4. At the end of input ``close`` emits the final KPI windows, and the sink is flushed:
   a replay either completes or reports the error that stopped it. The stats count the
   contributions that still reached a closed window (``too_late``); each is also a
   LATE_AFTER_WINDOW_CLOSED dead letter. With ``collect_heads`` the stats also carry the
   chain head of every lineage key the join still holds, for the run's signed audit
   checkpoint (``streams.replay.anchor``).

Memory is bounded by open state, never by history: nothing here keeps an output once
the sink has it, and the sinks write in batches as records come (JSON Lines every
2,000 records, chDB every 50,000 rows, the ClickHouse server every 20,000), so
replaying four times the history takes the same memory (``make bench``:
``bench_scale``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.events import Event
from schemas.files import RejectedInput, read_events
from schemas.records import ChainHead, DeadLetter
from schemas.validation import EventValidator
from sinks.base import Sink
from streams.core.lineage.anchor import heads_of_study
from streams.core.pipeline import GovernanceProcessor, ProcessorOutput

__all__ = ["DEFAULT_CHUNK_SIZE", "ReplayStats", "dead_letter_for", "replay"]

DEFAULT_CHUNK_SIZE = 500
"""Events joined as one batch. Outputs depend on it only in how many intermediate
lineage revisions appear; final lineage and final KPI values do not."""


@dataclass(slots=True)
class ReplayStats:
    """What a replay read and wrote."""

    files: int = 0
    events: int = 0
    rejected: int = 0
    lineage: int = 0
    kpis: int = 0
    breaches: int = 0
    reviews: int = 0
    dead_letters: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    too_late: dict[str, int] = field(default_factory=dict)
    """KPI contributions that reached a closed window, by window size."""
    heads: list[ChainHead] | None = None
    """With ``collect_heads``: the newest revision of every lineage key held at the end,
    for the run's audit checkpoint (``streams.replay.anchor``)."""
    watermark_ms: int | None = None
    """The watermark retention reached (with ``collect_heads``)."""
    evictable_before_ms: int | None = None
    """Studies whose last event is at or before this may have been evicted."""

    def count(self, out: ProcessorOutput) -> None:
        self.lineage += len(out.lineage)
        self.kpis += len(out.kpis)
        self.breaches += len(out.breaches)
        self.reviews += len(out.reviews)
        self.dead_letters += len(out.dead_letters)
        for letter in out.dead_letters:
            self._reject(letter)

    def _reject(self, letter: DeadLetter) -> None:
        reason = letter.reason.value
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


def dead_letter_for(path: Path, rejected: RejectedInput) -> DeadLetter:
    """Returns the dead letter of one input a file reader could not accept."""
    return DeadLetter(
        reason=rejected.reason,
        message=f"{path}:{rejected.position}: {rejected.error}",
        value=rejected.raw,
        source_topic=f"file:{path}",
        source_offset=rejected.position,
    )


def replay(
    inputs: Sequence[Path],
    processor: GovernanceProcessor,
    sink: Sink,
    validator: EventValidator,
    *,
    record_events: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    collect_heads: bool = False,
) -> ReplayStats:
    """Replays ``inputs``, merged by event time, through ``processor`` into ``sink``.

    Args:
        inputs: JSON Lines (``.jsonl``) and Avro container (``.avro``) files, each
            in its own order (one source each).
        processor: the core; a fresh one for a replay from scratch.
        sink: receives every output, and the accepted events when ``record_events``.
        validator: the value rules (its clock bounds how far ahead timestamps may be).
        record_events: also add each accepted event to the sink (the audit
            ``event_log``); the sink must replace direct identifiers before it writes.
        chunk_size: events joined as one batch.
        on_progress: called with the number of inputs read since the last call.
        collect_heads: also return the chain heads held at the end (``stats.heads``).

    Returns:
        Counts of what was read and written.
    """
    stats = ReplayStats()
    chunk: list[Event] = []
    sources: list[str] = []
    names = [str(path) for path in inputs]
    for name in names:
        processor.watermarks.register(name)

    def run() -> None:
        nonlocal chunk, sources
        if not chunk:
            return
        events, chunk, of, sources = chunk, [], sources, []
        out = processor.process(events, of)
        if record_events:
            for event in events:
                sink.add(event)
        _emit(out, sink, stats)
        if on_progress is not None:
            on_progress(len(events))

    stats.files = len(inputs)
    for index, item in _merge_by_event_time([_read(path, validator) for path in inputs]):
        if item is None:  # the file ended: its events so far count first
            run()
            _emit(processor.finish_source(names[index]), sink, stats)
        elif isinstance(item, RejectedInput):
            letter = dead_letter_for(inputs[index], item)
            sink.add(letter)
            stats.rejected += 1
            stats.dead_letters += 1
            stats._reject(letter)
        else:
            stats.events += 1
            chunk.append(item)
            sources.append(names[index])
            if len(chunk) >= chunk_size:
                run()
    run()
    _emit(processor.close(), sink, stats)
    stats.too_late = processor.too_late
    if collect_heads:
        joiner = processor.joiner
        stats.heads = [h for key, state in joiner.store.items() for h in heads_of_study(key, state)]
        stats.watermark_ms = joiner.watermark_ms
        stats.evictable_before_ms = joiner.eviction_cutoff_ms
    sink.flush()
    return stats


def _read(path: Path, validator: EventValidator) -> Iterable[Event | RejectedInput]:
    return read_events(path, validator=validator)


def _merge_by_event_time(
    files: Sequence[Iterable[Event | RejectedInput]],
) -> Iterator[tuple[int, Event | RejectedInput | None]]:
    """Yields ``(file index, item)`` of every file, merged by event time.

    Each file keeps its own order; the next event is the one with the least
    ``occurred_at_ms`` among the files' next events (ties: the lower index). Rejected
    inputs come as soon as they are read; each file ends with ``(index, None)``.
    """
    iterators = [iter(items) for items in files]
    heap: list[tuple[int, int, Event]] = []

    def pull(index: int) -> Iterator[tuple[int, Event | RejectedInput | None]]:
        for item in iterators[index]:
            if isinstance(item, RejectedInput):
                yield index, item
                continue
            heapq.heappush(heap, (item.occurred_at_ms, index, item))
            return
        yield index, None

    for index in range(len(iterators)):
        yield from pull(index)
    while heap:
        _, index, event = heapq.heappop(heap)
        yield index, event
        yield from pull(index)


def _emit(out: ProcessorOutput, sink: Sink, stats: ReplayStats) -> None:
    for record in out:
        sink.add(record)
    stats.count(out)
