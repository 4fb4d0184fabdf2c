"""The lineage half of a batch, shared by the offline replay and the live worker.

``LineageStep`` owns what both drivers do with a batch of accepted events and with a
new watermark: join them, turn each new revision into its outputs (the lineage row, a
review candidate when the revision makes its row one, the dead letters of the join),
and expire the studies whose retention the watermark passed. ``GovernanceProcessor``
(replay) and ``LineageStage`` (the live lineage agent) both drive one, so the rules
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from schemas.events import Event
from schemas.records import DeadLetter, DeadLetterReason, LineageRecord, ReviewCandidate
from streams.core.lineage.join import LineageJoiner
from streams.core.lineage.output import JoinOutput, LineageRevision

__all__ = ["REVIEW_REASON", "LineageOutputs", "LineageStep", "review_candidate_for"]

REVIEW_REASON = "AI positive, report absent, no interaction with the alert (secondary review)"


class LineageOutputs(Protocol):
    """Where a step appends its outputs (each driver has its own batch type)."""

    lineage: list[LineageRecord]
    reviews: list[ReviewCandidate]
    dead_letters: list[DeadLetter]


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


class LineageStep:
    """Joins batches and expires studies as the watermark passes their retention.

    Args:
        joiner: the join, over the driver's study store.

    Attributes:
        late_after_eviction: events refused because their study had already expired.
    """

    def __init__(self, joiner: LineageJoiner) -> None:
        self.joiner = joiner
        self._expired_to: int | None = None
        self.late_after_eviction = 0

    def join(self, events: Sequence[Event], out: LineageOutputs) -> tuple[LineageRevision, ...]:
        """Joins one batch into ``out``; returns its revisions (for the KPI half)."""
        return self._take(self.joiner.apply_many(events), out)

    def advance(self, watermark_ms: int | None, out: LineageOutputs) -> tuple[LineageRevision, ...]:
        """Expires the studies whose retention ``watermark_ms`` passed, into ``out``.

        Returns the expiry revisions; none unless the watermark moved forward.
        """
        if watermark_ms is None or (
            self._expired_to is not None and watermark_ms <= self._expired_to
        ):
            return ()
        self._expired_to = watermark_ms
        return self._take(self.joiner.advance(watermark_ms), out)

    def _take(self, joined: JoinOutput, out: LineageOutputs) -> tuple[LineageRevision, ...]:
        out.dead_letters.extend(joined.dead_letters)
        self.late_after_eviction += sum(
            1 for d in joined.dead_letters if d.reason is DeadLetterReason.LATE_AFTER_EVICTION
        )
        for revision in joined.revisions:
            out.lineage.append(revision.new)
            review = review_candidate_for(revision)
            if review is not None:
                out.reviews.append(review)
        return joined.revisions
