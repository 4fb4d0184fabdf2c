"""The whole governance core behind one object: join, KPIs, breaches, review candidates.

``GovernanceProcessor`` is what both drivers call: the offline replay
(``streams.runtime.replay``) with chunks of a file, and the live Faust agents with the
batches they are about to commit. It performs no I/O and reads no clock: it returns
every output as data (STYLE rule 4), and the driver decides where each goes.

Event time moves forward by itself as events arrive (the greatest ``occurred_at_ms``
seen). A driver whose input has gone quiet calls :meth:`GovernanceProcessor.advance`
with a time of its own (the live idle timer), and at the end of a finite input calls
:meth:`GovernanceProcessor.close`, which makes every KPI window final. Lineage inside
its retention is left as it is at the end of input: closing a file is not the passing
of 30 days.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from schemas.events import Event
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from streams.core.aggregator import KpiAggregator
from streams.core.breach import BreachEvaluator
from streams.core.config import LineageConfig
from streams.core.kpi_config import KpiConfig
from streams.core.lineage import JoinOutput, LineageJoiner, LineageRevision
from streams.core.lineage_store import StudyStore

__all__ = ["GovernanceProcessor", "ProcessorOutput", "review_candidate_for"]

REVIEW_REASON = "AI positive, report absent, no interaction with the alert (secondary review)"


@dataclass(slots=True)
class ProcessorOutput:
    """Everything one call produced, by kind, each list in emission order."""

    lineage: list[LineageRecord] = field(default_factory=list)
    kpis: list[KpiValue] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    reviews: list[ReviewCandidate] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __iter__(
        self,
    ) -> Iterator[LineageRecord | KpiValue | Breach | ReviewCandidate | DeadLetter]:
        yield from self.lineage
        yield from self.reviews
        yield from self.kpis
        yield from self.breaches
        yield from self.dead_letters

    def __len__(self) -> int:
        return (
            len(self.lineage)
            + len(self.kpis)
            + len(self.breaches)
            + len(self.reviews)
            + len(self.dead_letters)
        )


def review_candidate_for(revision: LineageRevision) -> ReviewCandidate | None:
    """Returns a review candidate when this revision makes its row one, else None.

    A row is announced once, on the revision where ``review_candidate`` becomes true
    (AI positive, report absent, nobody interacted: the Mayo secondary-review trigger).
    """
    new, old = revision.new, revision.old
    if not new.review_candidate or (old is not None and old.review_candidate):
        return None
    return ReviewCandidate(
        site_id=new.site_id,
        study_uid=new.study_uid,
        algorithm_name=new.algorithm_name,
        algorithm_version=new.algorithm_version,
        finding_code=new.finding_code,
        score=new.score,
        report_id=new.report_id,
        report_final_at_ms=new.report_final_at_ms,
        revision=new.revision,
        record_hash=new.record_hash,
        reason=REVIEW_REASON,
    )


def _revision_time(revision: LineageRevision) -> int:
    return revision.new.updated_at_ms


class GovernanceProcessor:
    """Drives the lineage join, the KPI aggregator and the breach policy together.

    Args:
        lineage: settings of the join (retention, eligibility, pseudonym key).
        kpi: settings of the KPI windows; defaults documented in ``kpi_config``.
        breaches: the breach policy evaluator; None evaluates no breaches.
        store: where study states live (a changelog-backed table in the live runtime).
    """

    def __init__(
        self,
        lineage: LineageConfig,
        kpi: KpiConfig | None = None,
        breaches: BreachEvaluator | None = None,
        store: StudyStore | None = None,
    ) -> None:
        self._kpi_config = kpi or KpiConfig()
        self.joiner = LineageJoiner(lineage, store)
        self.aggregator = KpiAggregator(self._kpi_config)
        self._breaches = breaches
        self._max_event_ms: int | None = None

    @property
    def max_event_ms(self) -> int | None:
        """The greatest event time seen, None before the first event."""
        return self._max_event_ms

    def process(self, events: Sequence[Event]) -> ProcessorOutput:
        """Applies a batch of accepted events and returns what they caused.

        The batch is joined as one (at most one lineage revision per row per batch;
        the final content does not depend on how the input is cut), then studies whose
        retention has passed are expired, then the KPI windows move.
        """
        out = ProcessorOutput()
        if not events:
            return out
        latest = max(event.occurred_at_ms for event in events)
        if self._max_event_ms is None or latest > self._max_event_ms:
            self._max_event_ms = latest
        self._take(self.joiner.apply_many(events), out)
        self._expire(out)
        return out

    def advance(self, event_time_ms: int) -> ProcessorOutput:
        """Moves event time forward without input (an idle timer); returns what fell due."""
        out = ProcessorOutput()
        if self._max_event_ms is None or event_time_ms > self._max_event_ms:
            self._max_event_ms = event_time_ms
        self._expire(out)
        self._kpis(self.aggregator.advance(event_time_ms), out)
        return out

    def close(self) -> ProcessorOutput:
        """End of a finite input: every KPI window becomes final and is emitted."""
        out = ProcessorOutput()
        self._kpis(self.aggregator.close_all(), out)
        return out

    # --- internals ------------------------------------------------------------------

    def _expire(self, out: ProcessorOutput) -> None:
        # Retention is measured against the same watermark as the KPI windows, so a
        # study is never evicted while an event for it could still be on time.
        if self._max_event_ms is None:
            return
        watermark = self._max_event_ms - self._kpi_config.allowed_lateness_ms
        self._take(self.joiner.advance(watermark), out)

    def _take(self, joined: JoinOutput, out: ProcessorOutput) -> None:
        out.dead_letters.extend(joined.dead_letters)
        for revision in joined.revisions:
            out.lineage.append(revision.new)
            review = review_candidate_for(revision)
            if review is not None:
                out.reviews.append(review)
        # The join returns a batch's revisions study by study; the aggregator moves its
        # watermark with every revision, so fed in that order a batch spanning more
        # than the allowed lateness would make windows final before the rest of the
        # batch reached them. In event-time order (stable, at most one revision per
        # row per batch) the batch is seen as a live stream would see it.
        for revision in sorted(joined.revisions, key=_revision_time):
            self._kpis(self.aggregator.apply(revision.old, revision.new), out)

    def _kpis(self, values: list[KpiValue], out: ProcessorOutput) -> None:
        if not values:
            return
        out.kpis.extend(values)
        if self._breaches is not None:
            out.breaches.extend(self._breaches.apply([v for v in values if v.final]))
