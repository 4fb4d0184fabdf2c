"""The whole governance core behind one object: join, KPIs, breaches, review candidates.

``GovernanceProcessor`` is what the offline replay (``streams.replay.driver``) calls
with chunks of its files. It is made of the two halves the live worker runs in two
stages: ``LineageStep`` (join, review candidates, retention) and ``KpiStep`` (windows,
breaches, late contributions), so replay and live share one implementation of each.
It performs no I/O and reads no clock: it returns every output as data (STYLE rule 4),
and the driver decides where each goes.

Event time is tracked per *source* (an input file, a partition): each source's
watermark is the greatest ``occurred_at_ms`` seen there minus ``allowed_lateness_ms``,
and the processor's watermark is their minimum (``streams.core.watermarks``), so input
read from several sources in no global order loses nothing. Retention and the KPI
windows both follow that one watermark, moved once per batch, after the whole batch was
joined and counted. A driver names the sources it will read up front (``sources``), says
when one has no more input (:meth:`GovernanceProcessor.finish_source`), and at the end of
a finite input calls :meth:`GovernanceProcessor.close`, which makes every KPI window
final. Lineage inside its retention is left as it is at the end of input: closing a
file is not the passing of 30 days.

Contributions that still reach a closed KPI window come back as dead letters with
reason LATE_AFTER_WINDOW_CLOSED (and are counted in ``aggregator.too_late``).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.events import Event
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.breach import BreachEvaluator
from streams.core.kpi.config import KpiConfig
from streams.core.kpi.step import KpiOutputs, KpiStep
from streams.core.lineage.config import LineageConfig
from streams.core.lineage.join import LineageJoiner, LineageRevision
from streams.core.lineage.step import LineageStep
from streams.core.lineage.store import StudyStore
from streams.core.watermarks import WatermarkTracker

__all__ = ["DEFAULT_SOURCE", "GovernanceProcessor", "KpiHalf", "ProcessorOutput"]

DEFAULT_SOURCE = "input"
"""The source of events given without one: a single input in one event-time order."""


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


def _revision_time(revision: LineageRevision) -> int:
    return revision.new.updated_at_ms


class KpiHalf(Protocol):
    """The KPI half of the processor: a local ``KpiStep``, or one run elsewhere
    (``streams.replay.parallel`` runs it in a second process)."""

    @property
    def too_late(self) -> dict[str, int]: ...

    def count(self, old: LineageRecord | None, new: LineageRecord, out: KpiOutputs) -> None: ...

    def advance(self, watermark_ms: int, out: KpiOutputs) -> None: ...

    def close_all(self, out: KpiOutputs) -> None: ...

    def take_late(self, out: KpiOutputs) -> None: ...


class GovernanceProcessor:
    """Drives the lineage join, the KPI aggregator and the breach policy together.

    Args:
        lineage: settings of the join (retention, eligibility, pseudonym key).
        kpi: settings of the KPI windows; defaults documented in ``kpi_config``.
        breaches: the breach policy evaluator; None evaluates no breaches.
        store: where study states live (a changelog-backed table in the live runtime).
        sources: the sources the driver will read (e.g. every input file); each holds
            the watermark back until it delivers or is finished. Events given without
            a source belong to ``DEFAULT_SOURCE``.
        kpi_windows: only the windows of these (KPI name, window size) pairs are
            computed and emitted (``KpiAggregator``); None: all of them. A driver that
            only evaluates the breach policy passes the pairs its rules read.
        kpi_half: runs the KPI half instead of a local ``KpiStep`` (``breaches`` and
            ``kpi_windows`` are then its business); it receives the same calls in the
            same order, so its outputs are the same.
    """

    def __init__(
        self,
        lineage: LineageConfig,
        kpi: KpiConfig | None = None,
        breaches: BreachEvaluator | None = None,
        store: StudyStore | None = None,
        sources: Iterable[Hashable] = (),
        *,
        kpi_windows: Collection[tuple[str, str]] | None = None,
        kpi_half: KpiHalf | None = None,
    ) -> None:
        self._kpi_config = kpi or KpiConfig()
        self.joiner = LineageJoiner(lineage, store)
        self.aggregator = KpiAggregator(self._kpi_config, kpi_windows=kpi_windows)
        self.watermarks = WatermarkTracker(self._kpi_config.allowed_lateness_ms, sources)
        self._lineage = LineageStep(self.joiner)
        self._kpi: KpiHalf = KpiStep(self.aggregator, breaches) if kpi_half is None else kpi_half
        self._watermark_ms: int | None = None

    @property
    def too_late(self) -> dict[str, int]:
        """KPI contributions that reached a closed window, by window size."""
        return self._kpi.too_late

    @property
    def watermark_ms(self) -> int | None:
        """The watermark retention and KPI windows follow, None before it exists."""
        return self._watermark_ms

    def process(
        self, events: Sequence[Event], sources: Sequence[Hashable] | None = None
    ) -> ProcessorOutput:
        """Applies a batch of accepted events and returns what they caused.

        The batch is joined as one (at most one lineage revision per row per batch;
        the final content does not depend on how the input is cut) and its
        contributions counted; then the watermark moves: studies whose retention has
        passed are expired and KPI windows it passed become final.

        Args:
            events: the batch, each source's events in that source's order.
            sources: the source of each event (parallel to ``events``); None: every
                event is from ``DEFAULT_SOURCE``.
        """
        out = ProcessorOutput()
        if not events:
            return out
        observe = self.watermarks.observe
        if sources is None:
            observe(DEFAULT_SOURCE, max(event.occurred_at_ms for event in events))
        else:
            for event, source in zip(events, sources, strict=True):
                observe(source, event.occurred_at_ms)
        self._count(self._lineage.join(events, out), out)
        self._advance(out)
        return out

    def finish_source(self, source: Hashable) -> ProcessorOutput:
        """A source has no more input: it stops holding the watermark back."""
        self.watermarks.mark_idle(source)
        out = ProcessorOutput()
        self._advance(out)
        return out

    def close(self) -> ProcessorOutput:
        """End of a finite input: every KPI window becomes final and is emitted."""
        out = ProcessorOutput()
        self._kpi.close_all(out)
        self._kpi.take_late(out)
        return out

    # --- internals ------------------------------------------------------------------

    def _advance(self, out: ProcessorOutput) -> None:
        watermark = self.watermarks.watermark_ms
        if watermark is not None and (self._watermark_ms is None or watermark > self._watermark_ms):
            self._watermark_ms = watermark
            # Retention follows the same watermark as the KPI windows, so a study is
            # never evicted while an event for it could still be on time; its expiry
            # revisions count before the windows they fall in become final.
            self._count(self._lineage.advance(watermark, out), out)
            self._kpi.advance(watermark, out)
        self._kpi.take_late(out)

    def _count(self, revisions: Sequence[LineageRevision], out: ProcessorOutput) -> None:
        # In event-time order (stable, at most one revision per row per batch): the
        # windows do not depend on it, the order of current values does.
        for revision in sorted(revisions, key=_revision_time):
            self._kpi.count(revision.old, revision.new, out)
