"""Counts of what the fuzz tests ran, per target, for the summary the conftest prints.

Each example records how many inputs its target accepted and rejected (a batch of
Kafka messages or a file of lines holds several), and the reasons of the rejections.
``tests/unit/fuzz/conftest.py`` prints the table at the end of the run and writes it
to ``.imgov/fuzz/summary.json``: the closing note of issue 16 quotes these figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TALLY", "FuzzTally", "TargetTally"]


@dataclass(slots=True)
class TargetTally:
    """What one target saw."""

    examples: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def inputs(self) -> int:
        return self.accepted + self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 2),
            "rejected_by_reason": dict(sorted(self.reasons.items())),
        }


class FuzzTally:
    """Per-target counts for one test session (one process: the suite runs without xdist)."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetTally] = {}

    def record(self, target: str, *, accepted: int = 0, rejected: Iterable[str] = ()) -> None:
        """One example of ``target`` ran: ``accepted`` inputs became events, each reason in
        ``rejected`` is one input that became a dead letter."""
        tally = self.targets.setdefault(target, TargetTally())
        reasons = list(rejected)
        tally.examples += 1
        tally.accepted += accepted
        tally.rejected += len(reasons)
        tally.reasons.update(reasons)

    def examples(self) -> dict[str, int]:
        return {name: t.examples for name, t in self.targets.items()}


TALLY = FuzzTally()
