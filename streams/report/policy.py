"""The breach policy as the report shows it, read with the core's own policy model.

The report explains each breach by its rule and draws the sustained-discordance baseline
the rule uses, so it reads the same file the pipeline judged with, through
:class:`~streams.core.kpi.breach.BreachPolicy` (validation and defaults included):
what the report says a rule does is what the evaluator did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streams.core.kpi.breach import BreachPolicy, BreachRule, RuleKind

__all__ = ["BASELINE_DAYS", "discordance_baseline_days", "load_policy_rules"]

BASELINE_DAYS = 60
"""Baseline of the sustained-discordance chart when the policy names none."""


def load_policy_rules(path: Path) -> tuple[tuple[BreachRule, ...], int | None]:
    """Returns the rules and version of the breach policy file at ``path``.

    Called by the demo before it writes the report. A missing, unreadable or invalid
    policy gives no rules and no version: the report then explains breaches by their
    evidence alone (the pipeline itself refuses such a policy, with the reason).
    """
    try:
        policy = BreachPolicy.from_toml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return (), None
    return policy.rules, policy.version


def discordance_baseline_days(policy: Sequence[BreachRule]) -> int:
    """Returns the baseline length, in days, of the policy's sustained-discordance rule."""
    for rule in policy:
        if rule.kpi == "discordance_rate" and rule.kind is RuleKind.BASELINE:
            return rule.baseline_days
    return BASELINE_DAYS
