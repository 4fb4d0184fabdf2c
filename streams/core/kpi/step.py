"""The KPI half of a batch, shared by the offline replay and the live worker.

``KpiStep`` owns what both drivers do with lineage revisions and watermarks: count
each revision into its windows (retracting the one it replaces), close the windows a
watermark passed, evaluate the breach policy on every final value, and hand back the
contributions that reached windows already closed as dead letters.
``GovernanceProcessor`` (replay) drives one; the live KPI stage drives one per
contributions partition.
"""

from __future__ import annotations

from typing import Protocol

from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord
from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.breach import BreachEvaluator
from streams.core.kpi.catalogue import RecordContribution

__all__ = ["KpiOutputs", "KpiStep", "LateOrigin"]

LateOrigin = tuple[str, int, int]
"""Where a late contribution was read: (topic, partition, offset)."""


class KpiOutputs(Protocol):
    """Where a step appends its outputs (each driver has its own batch type)."""

    kpis: list[KpiValue]
    breaches: list[Breach]
    dead_letters: list[DeadLetter]


class KpiStep:
    """Windows, breaches and late contributions over one stream of revisions.

    Args:
        aggregator: the KPI windows.
        breaches: the breach policy; None evaluates no breaches.
    """

    def __init__(self, aggregator: KpiAggregator, breaches: BreachEvaluator | None) -> None:
        self.aggregator = aggregator
        self.breaches = breaches

    def count(self, old: LineageRecord | None, new: LineageRecord, out: KpiOutputs) -> None:
        """Counts revision ``new`` (retracting ``old``) into its windows."""
        self._emit(self.aggregator.apply(old, new), out)

    def count_contribution(
        self,
        old: RecordContribution | None,
        new: RecordContribution,
        updated_at_ms: int,
        record: LineageRecord | None,
        out: KpiOutputs,
    ) -> None:
        """``count`` for a contribution computed apart (``KpiAggregator.apply_contribution``)."""
        self._emit(self.aggregator.apply_contribution(old, new, updated_at_ms, record), out)

    @property
    def too_late(self) -> dict[str, int]:
        """Contributions that reached a closed window, by window size."""
        return self.aggregator.too_late

    def advance(self, watermark_ms: int, out: KpiOutputs) -> None:
        """Makes the windows that ``watermark_ms`` passed final, into ``out``."""
        self._emit(self.aggregator.advance(watermark_ms), out)

    def close_all(self, out: KpiOutputs) -> None:
        """End of input (or idle close): every window becomes final, into ``out``."""
        self._emit(self.aggregator.close_all(), out)

    def emit_current(self, out: KpiOutputs) -> bool:
        """Current values of the open windows into ``out``; whether there were any."""
        values = self.aggregator.emit_current()
        self._emit(values, out)
        return bool(values)

    def take_late(self, out: KpiOutputs, origin: LateOrigin | None = None) -> None:
        """Moves the contributions that reached closed windows into ``out`` as dead letters.

        Args:
            out: where they go.
            origin: the message they were read from, when the driver reads messages.
        """
        letters = self.aggregator.take_late()
        if origin is not None:
            topic, partition, offset = origin
            letters = [
                letter.model_copy(
                    update={
                        "source_topic": topic,
                        "source_partition": partition,
                        "source_offset": offset,
                    }
                )
                for letter in letters
            ]
        out.dead_letters.extend(letters)

    def _emit(self, values: list[KpiValue], out: KpiOutputs) -> None:
        if not values:
            return
        out.kpis.extend(values)
        if self.breaches is not None:
            out.breaches.extend(self.breaches.apply([v for v in values if v.final]))
