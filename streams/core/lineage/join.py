"""The per-study lineage join (DESIGN §4): events in, lineage revisions out.

:class:`LineageJoiner` is pure: it reads no clock and performs no I/O. The runtime (Faust
agents live, the replay driver offline) feeds it decoded events with ``apply`` or, a
batch at a time, ``apply_many``, moves event time forward with ``advance``, and maps the
:class:`~streams.core.lineage.output.JoinOutput` it gets back to topics and tables.

How it stays deterministic: a study's state is the set of facts of its distinct events
(:mod:`streams.core.lineage.state`), every record field is a function of that set
(:mod:`streams.core.lineage.outcome`), so any permutation of the same events, with any
duplicates, ends in the same record content per key. Revision numbers and the hash
chain count the changes on the way and so may differ between orders; the content,
including ``event_ids`` (sorted) and ``updated_at_ms``, does not
(:func:`streams.core.lineage.hashchain.content_hash`).

Revisions: after each event (or batch, :meth:`LineageJoiner.apply_many`) the rows of
the touched studies that the events can have changed are re-derived and compared with
the record emitted last; each row that differs gets revision + 1, chained to the
previous ``record_hash``. Since ``event_ids`` grows with every accepted event, a row an
event belongs to always changes; a row it does not belong to changes only through
shared fields (reports, study-level pseudonyms), so an inference or alert re-derives
its own row alone and a report (or a new least pseudonym) every row of the study
(:meth:`~streams.core.lineage.fold.StudyBuilder.changed_rows`). The previous record is
rebuilt from the old state (or taken from a cache of recent studies) rather than
stored, which keeps the state small; it is exactly the record emitted last (an
invariant of this class), and is handed out as the *old* side of the pair the KPI
aggregator retracts.

Cost (DESIGN §10): the events of a study in one batch are folded into one mutable
draft (:class:`~streams.core.lineage.fold.StudyBuilder`) and frozen into one new state;
records are built without pydantic validation
(:func:`~streams.core.lineage.output.chain_record`) and hashed once, on the joiner's
fast path of the canonical JSON (:mod:`streams.core.lineage.hashchain`); pseudonyms,
eligibility and finding facts are memoised. ``tests/benchmarks/bench_lineage.py``
measures it.

Eviction and late data: a study is evicted once ``watermark >= last event time +
lineage_retention``; its incomplete rows get a final EXPIRED_* revision and the study
is replaced by a tombstone kept ``evicted_study_memory_ms``. An event for a tombstoned
study, or for an unknown study when the event itself is already older than the
retention, is returned as a LATE_AFTER_EVICTION dead letter. End of input expires
nothing: replay leaves open studies open, as live processing would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from schemas.events import Event
from schemas.records import DeadLetter, DeadLetterReason, LineageRecord
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.expiry import ExpiryIndex
from streams.core.lineage.fold import StudyBuilder, StudyFolder
from streams.core.lineage.outcome import RecordContent, derive_contents
from streams.core.lineage.output import (
    EMPTY_OUTPUT,
    JoinOutput,
    LineageRevision,
    build_record,
    chain_record,
    event_json_bytes,
)
from streams.core.lineage.pseudonym import Pseudonymiser
from streams.core.lineage.state import RowKey, RowMeta, StudyFacts, StudyKey, StudyState
from streams.core.lineage.store import InMemoryStudyStore, StudyStore

__all__ = ["JoinOutput", "LineageJoiner", "LineageRevision", "event_json_bytes"]

_NO_RECORDS: dict[RowKey, LineageRecord] = {}


class LineageJoiner:
    """Joins inference, alert and report events per study into lineage records.

    Args:
        config: the join's settings (retention, eligibility, pseudonym key).
        store: where study states live; an :class:`InMemoryStudyStore` by default. The
            expiry index is rebuilt from it here.
        recent_studies: how many recently changed studies keep the last revision of
            their rows in memory, so the next event for one of them need not derive
            the *old* records again. A cache only: any size, 0 included, gives the same
            outputs.
    """

    def __init__(
        self,
        config: LineageConfig,
        store: StudyStore | None = None,
        *,
        recent_studies: int = 10_000,
    ) -> None:
        self._config = config
        self._store: StudyStore = store if store is not None else InMemoryStudyStore()
        self._pseudonymiser = Pseudonymiser(
            config.pseudonym_key.get_secret_value(),
            pseudonymise_study_uid=config.pseudonymise_study_uid,
        )
        self._folder = StudyFolder(self._pseudonymiser, config)
        self._index = ExpiryIndex()
        self._watermark_ms: int | None = None
        self._recent: OrderedDict[StudyKey, tuple[StudyState, dict[RowKey, LineageRecord]]] = (
            OrderedDict()
        )
        self._recent_studies = recent_studies
        self.rebuild_index()

    @property
    def watermark_ms(self) -> int | None:
        """The greatest watermark given to :meth:`advance`, None before the first."""
        return self._watermark_ms

    @property
    def eviction_cutoff_ms(self) -> int | None:
        """Studies whose last event time is at or before this may have been evicted
        (the watermark minus the retention); None before the first watermark."""
        return self._cutoff_ms()

    @property
    def store(self) -> StudyStore:
        """The state store this joiner owns."""
        return self._store

    @property
    def studies_held(self) -> int:
        """Studies in the store (open joins, and tombstones until they expire)."""
        return len(self._index)

    def rebuild_index(self) -> None:
        """Rebuilds the expiry index from the store.

        Called on construction; call it again when the store's content changed behind
        the joiner's back (a partition assignment change in the live runtime).
        """
        self._index.clear()
        self._recent.clear()
        for key, state in self._store.items():
            self._index.schedule(key, self._due_ms(state))

    # --- events ---------------------------------------------------------------------

    def apply(self, event: Event) -> JoinOutput:
        """Applies one input event; the same as ``apply_many([event])``.

        Returns:
            The revisions it caused, or a dead letter when the study was evicted, the
            event is older than the retention allows, or the study has too many
            events. A duplicate ``event_id`` returns an empty output.
        """
        return self.apply_many((event,))

    def apply_many(self, events: Iterable[Event]) -> JoinOutput:
        """Applies a batch of input events, emitting at most one revision per row.

        Like the record cache in front of a Kafka Streams KTable: the events of a
        study in one batch are folded together and its rows are derived, compared
        and hashed once, so a batch costs per study touched rather than per event.
        The final content is the same as applying the events one by one; only the
        number of intermediate revisions differs. The runtime calls it with what it
        will commit together (a Faust batch, a chunk of a replay file).

        Returns:
            The revisions, by study in order of first appearance in the batch, and
            the dead letters, in input order.
        """
        dead_letters: list[DeadLetter] = []
        drafts: dict[StudyKey, StudyBuilder] = {}
        study_uid = self._pseudonymiser.study_uid if self._config.pseudonymise_study_uid else None
        max_events = self._config.max_events_per_study
        for event in events:
            uid = event.study_uid if study_uid is None else study_uid(event.study_uid)
            key = (event.site_id, uid)
            draft = drafts.get(key)
            if draft is None:
                state = self._store.get(key)
                refusal = self._refusal(event, state)
                if refusal is not None:
                    dead_letters.append(self._dead_letter(event, key, *refusal))
                    continue
                if state is not None and state.has_event(event.event_id):
                    continue  # a duplicate changes nothing
                draft = drafts[key] = self._folder.begin(state, event.occurred_at_ms)
            elif event.event_id in draft.event_ids:
                continue
            elif len(draft.event_ids) >= max_events:
                dead_letters.append(self._dead_letter(event, key, *self._oversized()))
                continue
            draft.add(event)
        revisions: list[LineageRevision] = []
        for key, draft in drafts.items():
            changed = draft.changed_rows()
            new_contents = derive_contents(key[0], key[1], draft, rows=changed)
            old_records = self._emitted(key, draft.base, changed)
            emitted, latest = self._revise(old_records, draft, new_contents, revisions)
            state = draft.build(emitted)
            self._store.put(key, state)
            self._index.schedule(key, self._due_ms(state))
            self._remember(key, state, old_records, latest)
        if not revisions and not dead_letters:
            return EMPTY_OUTPUT
        return JoinOutput(revisions=tuple(revisions), dead_letters=tuple(dead_letters))

    def _refusal(
        self, event: Event, state: StudyState | None
    ) -> tuple[DeadLetterReason, str] | None:
        """Returns why an event cannot join its stored study, or None when it can."""
        if state is not None and state.evicted_at_ms is not None:
            return (
                DeadLetterReason.LATE_AFTER_EVICTION,
                f"study lineage was evicted at watermark {state.evicted_at_ms} "
                f"(lineage_retention_ms={self._config.lineage_retention_ms})",
            )
        if state is None:
            cutoff = self._cutoff_ms()
            if cutoff is not None and event.occurred_at_ms <= cutoff:
                return (
                    DeadLetterReason.LATE_AFTER_EVICTION,
                    f"event time is older than watermark {self._watermark_ms} minus "
                    f"lineage_retention_ms={self._config.lineage_retention_ms} and the "
                    "study has no open lineage",
                )
            return None
        if state.event_count() >= self._config.max_events_per_study and not state.has_event(
            event.event_id
        ):
            return self._oversized()
        return None

    def _oversized(self) -> tuple[DeadLetterReason, str]:
        return (
            DeadLetterReason.OVERSIZED,
            f"study already has max_events_per_study={self._config.max_events_per_study} events",
        )

    def _emitted(
        self, key: StudyKey, state: StudyState | None, rows: list[RowKey] | None
    ) -> dict[RowKey, LineageRecord]:
        """Returns the last revision emitted for rows of a stored state (all when None).

        From the cache of recent studies, else rebuilt from the state: its facts give
        the content and its rows' chain positions the rest. The result may hold more
        rows than asked for; it must not be changed (it may be the cache's).
        """
        if state is None:
            return {}
        cached = self._recent.get(key)
        # Identity is the fast check (in-memory store); equality covers stores that
        # decode a fresh copy, and a store changed behind the joiner's back.
        known = (
            cached[1]
            if cached is not None and (cached[0] is state or cached[0] == state)
            else _NO_RECORDS
        )
        wanted = state.rows if rows is None else rows
        missing = [k for k in wanted if k not in known and k in state.rows]
        if not missing:
            return known
        records = dict(known)
        for row_key, content in derive_contents(key[0], key[1], state, rows=missing).items():
            meta = state.rows[row_key].emitted
            if meta is not None:
                records[row_key] = build_record(content, meta)
        return records

    def _revise(
        self,
        old_records: dict[RowKey, LineageRecord],
        facts: StudyFacts,
        new_contents: dict[RowKey, RecordContent],
        out: list[LineageRevision],
    ) -> tuple[dict[RowKey, RowMeta], dict[RowKey, LineageRecord]]:
        """Appends a revision per changed row to ``out``.

        Returns:
            The new chain positions of those rows, and their new records.
        """
        emitted: dict[RowKey, RowMeta] = {}
        latest: dict[RowKey, LineageRecord] = {}
        for row_key, content in new_contents.items():
            old = old_records.get(row_key)
            # The content is a subset of the record's fields: equal on all of them?
            if old is not None and content.items() <= old.__dict__.items():
                continue
            meta = facts.rows[row_key].emitted
            if meta is None:
                record = chain_record(content, 1, None)
                old = None
            else:
                record = chain_record(content, meta.revision + 1, meta.record_hash)
            emitted[row_key] = RowMeta(record.revision, record.prev_hash, record.record_hash)
            latest[row_key] = record
            out.append(LineageRevision(old=old, new=record))
        return emitted, latest

    def _remember(
        self,
        key: StudyKey,
        state: StudyState,
        old_records: dict[RowKey, LineageRecord],
        latest: dict[RowKey, LineageRecord],
    ) -> None:
        """Caches the last revision of the rows of a study that were at hand."""
        if self._recent_studies <= 0:
            return
        self._recent[key] = (state, {**old_records, **latest})
        self._recent.move_to_end(key)
        if len(self._recent) > self._recent_studies:
            self._recent.popitem(last=False)

    # --- event time -----------------------------------------------------------------

    def advance(self, watermark_ms: int) -> JoinOutput:
        """Moves the join's watermark and evicts the studies that fell due.

        A study is evicted when ``watermark_ms >= last event time +
        lineage_retention_ms``: its incomplete rows get a last revision with
        completeness EXPIRED_NO_REPORT or EXPIRED_NO_AI, and a tombstone remembers the
        study for ``evicted_study_memory_ms``. A watermark that does not move forward
        does nothing.

        Returns:
            The EXPIRED_* revisions, ordered by due time then study key.
        """
        if self._watermark_ms is not None and watermark_ms <= self._watermark_ms:
            return EMPTY_OUTPUT
        self._watermark_ms = watermark_ms
        revisions: list[LineageRevision] = []
        for _, key in self._index.pop_due(watermark_ms):
            state = self._store.get(key)
            if state is None:
                continue  # forgotten behind the index's back: nothing to do
            if self._due_ms(state) > watermark_ms:
                self._index.schedule(key, self._due_ms(state))  # stale entry
            elif state.evicted_at_ms is not None:
                self._store.delete(key)
            else:
                revisions.extend(self._evict(key, state, watermark_ms))
        return JoinOutput(revisions=tuple(revisions)) if revisions else EMPTY_OUTPUT

    def _evict(self, key: StudyKey, state: StudyState, watermark_ms: int) -> list[LineageRevision]:
        old_records = self._emitted(key, state, None)
        self._recent.pop(key, None)
        expired_contents = derive_contents(key[0], key[1], state, expired=True)
        revisions: list[LineageRevision] = []
        self._revise(old_records, state, expired_contents, revisions)
        tombstone = StudyState(last_event_ms=state.last_event_ms, evicted_at_ms=watermark_ms)
        self._store.put(key, tombstone)
        self._index.schedule(key, self._due_ms(tombstone))
        return revisions

    def _due_ms(self, state: StudyState) -> int:
        if state.evicted_at_ms is not None:
            return state.evicted_at_ms + self._config.evicted_study_memory_ms
        return state.last_event_ms + self._config.lineage_retention_ms

    def _cutoff_ms(self) -> int | None:
        if self._watermark_ms is None:
            return None
        return self._watermark_ms - self._config.lineage_retention_ms

    # --- reading --------------------------------------------------------------------

    def current_records(self) -> Iterator[LineageRecord]:
        """Yields the latest revision of every row of every open study, by key.

        For end-of-replay summaries and tests; evicted studies are not included.
        """
        for key, state in sorted(self._store.items(), key=lambda item: item[0]):
            if state.evicted_at_ms is not None:
                continue
            contents = derive_contents(key[0], key[1], state)
            for row_key, content in contents.items():
                meta = state.rows[row_key].emitted
                if meta is not None:
                    yield build_record(content, meta)

    def _dead_letter(
        self, event: Event, key: StudyKey, reason: DeadLetterReason, message: str
    ) -> DeadLetter:
        return DeadLetter(
            reason=reason,
            message=message,
            value=event_json_bytes(event),
            event_id=event.event_id,
            study_uid=key[1],
        )
