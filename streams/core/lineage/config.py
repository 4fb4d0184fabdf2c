"""Settings of the lineage join (DESIGN §4, §8), as a frozen pydantic model.

Only the options the join needs live here; KPI, window and breach options belong to
their own model beside the aggregator. The runtime builds these from its settings
(environment, files) and hands them to the core: the core reads no environment.

``LineageConfig`` refuses to build without a pseudonymisation key unless ``demo`` is
set, in which case it uses :data:`DEMO_PSEUDONYM_KEY`, a fixed key that is public and
labelled as such: pseudonyms made with it protect nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretBytes, model_validator

from schemas.units import DAY_MS

__all__ = [
    "DEMO_PSEUDONYM_KEY",
    "MIN_PSEUDONYM_KEY_BYTES",
    "AlgorithmEligibility",
    "LineageConfig",
]

DEMO_PSEUDONYM_KEY = b"imgov-DEMO-ONLY-pseudonym-key--PUBLIC--not-a-secret"
"""The fixed key used when ``demo`` is set. It is in the source code, so it is public."""

MIN_PSEUDONYM_KEY_BYTES = 32
"""Shortest accepted key: HMAC-SHA256 keys shorter than the digest weaken it."""


class AlgorithmEligibility(BaseModel):
    """Which studies an algorithm is configured to read (DESIGN §4, coverage KPI).

    A final report whose modality and body part match makes the study eligible: if
    the algorithm then has no inference for it, the join emits a NO_AI_RESULT row.
    Matching ignores case. An empty ``body_parts`` matches any body part, including
    a report that names none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm_name: str
    finding_code: str
    modality: str
    body_parts: tuple[str, ...] = ()

    def matches(self, modality: str | None, body_part: str | None) -> bool:
        """Returns whether a report with this modality and body part is eligible."""
        if modality is None or modality.upper() != self.modality.upper():
            return False
        if not self.body_parts:
            return True
        if body_part is None:
            return False
        wanted = body_part.upper()
        return any(part.upper() == wanted for part in self.body_parts)


class LineageConfig(BaseModel):
    """Options of the per-study lineage join.

    Attributes:
        lineage_retention_ms: a study's state is evicted this long after its last
            event time, measured against the watermark (DESIGN §4: 30 days).
        evicted_study_memory_ms: how long the key of an evicted study is remembered
            (a tombstone of a few dozen bytes), so a later event for it becomes a
            LATE_AFTER_EVICTION dead letter. After that an event whose own time is
            older than the retention is still refused; a *recent* event for a
            forgotten study would start a new lineage at revision 1, so keep this
            at least as long as reports can trail their study.
        max_events_per_study: events beyond this many for one study become
            OVERSIZED dead letters, bounding the state of a runaway study.
        eligibility: the algorithms configured per modality and body part.
        pseudonym_key: the HMAC-SHA256 key for ``*_ref`` pseudonyms (DESIGN §8).
        demo: allow running without a key, with the public demo key.
        pseudonymise_study_uid: replace ``study_uid`` by its pseudonym everywhere
            the join emits it (and in its state keys).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    lineage_retention_ms: int = Field(default=30 * DAY_MS, gt=0)
    evicted_study_memory_ms: int = Field(default=30 * DAY_MS, gt=0)
    max_events_per_study: int = Field(default=256, gt=0)
    eligibility: tuple[AlgorithmEligibility, ...] = ()
    pseudonym_key: SecretBytes
    demo: bool = False
    pseudonymise_study_uid: bool = False

    @model_validator(mode="before")
    @classmethod
    def _key_or_demo(cls, data: Any) -> Any:
        # Runs before field validation so the frozen model is built once, complete.
        if not isinstance(data, dict) or data.get("pseudonym_key") is not None:
            return data
        if data.get("demo"):
            return {**data, "pseudonym_key": DEMO_PSEUDONYM_KEY}
        raise ValueError(
            "no pseudonymisation key configured: set one (environment or key file) "
            "or run in demo mode"
        )

    @model_validator(mode="after")
    def _key_long_enough(self) -> LineageConfig:
        if len(self.pseudonym_key.get_secret_value()) < MIN_PSEUDONYM_KEY_BYTES:
            raise ValueError(
                f"the pseudonymisation key must be at least {MIN_PSEUDONYM_KEY_BYTES} bytes"
            )
        return self

    @property
    def uses_demo_key(self) -> bool:
        """Whether pseudonyms are made with the public demo key (protecting nothing)."""
        return self.pseudonym_key.get_secret_value() == DEMO_PSEUDONYM_KEY

    def eligible_algorithms(
        self, modality: str | None, body_part: str | None
    ) -> tuple[AlgorithmEligibility, ...]:
        """Returns the algorithms configured for a report's modality and body part."""
        return tuple(e for e in self.eligibility if e.matches(modality, body_part))
