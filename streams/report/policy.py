"""The breach policy as the report shows it, read with the core's own policy model.

The report explains each breach by its rule, and draws the sustained-discordance baseline
and the path of each CUSUM rule's statistic as the rules compute them, so it reads the
same file the pipeline judged with, through :class:`~streams.core.kpi.breach.BreachPolicy`
(validation and defaults included): what the report says a rule does is what the
evaluator did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streams.core.kpi.breach import BreachPolicy, BreachRule, RuleKind

__all__ = [
    "BASELINE_DAYS",
    "discordance_baseline_days",
    "discordance_baseline_rule",
    "load_policy_rules",
    "site_cusum_rules",
]

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


def discordance_baseline_rule(policy: Sequence[BreachRule]) -> BreachRule | None:
    """Returns the policy's sustained-discordance rule (a baseline rule on discordance)."""
    for rule in policy:
        if rule.kpi == "discordance_rate" and rule.kind is RuleKind.BASELINE:
            return rule
    return None


def discordance_baseline_days(policy: Sequence[BreachRule]) -> int:
    """Returns the baseline length, in days, of the policy's sustained-discordance rule."""
    rule = discordance_baseline_rule(policy)
    return BASELINE_DAYS if rule is None else rule.baseline_days


def site_cusum_rules(policy: Sequence[BreachRule]) -> list[BreachRule]:
    """Returns the policy's CUSUM rules that judge each site (on any daily proportion).

    Those are the ones the report can chart: it reads the site series (all versions).
    """
    return [
        rule for rule in policy if rule.kind is RuleKind.CUSUM and rule.scope.matches("site", "*")
    ]
