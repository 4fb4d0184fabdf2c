"""The two stages of the live worker as plain objects: batches in, outputs as data.

The Faust agents (``streams.runtime.agents``) own consumers, producers, the sink and
commits; these classes decode messages, keep event time per source and state per
partition, and drive the core's own halves of a batch: ``LineageStep`` (join, review
candidates, retention) and ``KpiStep`` (windows, breaches, late contributions), the
same two the offline replay drives through ``GovernanceProcessor``. They need no
broker, so unit tests drive them directly.

Equality with replay holds for *final* results: the latest lineage revision per row,
the final value of every KPI window, the breaches and the dead letters. Intermediate
revisions depend on how the input was cut into batches (at most one revision per row
per batch), as they do in replay with its chunks.
"""

from streams.runtime.stages.kpi import KpiBatch, KpiStage
from streams.runtime.stages.lineage import LineageBatch, LineageStage

__all__ = ["KpiBatch", "KpiStage", "LineageBatch", "LineageStage"]
