"""A small seeded demo run shared by the tests of this package (no server: chDB).

20 days x 2 sites x 40 studies a day, the ICH detector of site-02 losing 25 points of
specificity from day 10.
The breach policy is the project's, with an 8-day baseline for the sustained-
discordance rule (the real one uses 60 days, longer than this run). Every output is
also written as JSON Lines (``outputs/``) beside the simulator's ground truth
(``truth.jsonl``), which is what the tests compute their expected numbers from.

chDB allows one open data directory per process: every test closes what it opens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.paths import REPO_ROOT
from streams.replay.demo import DemoOptions, DemoRun, run_demo

POLICY = REPO_ROOT / "infra" / "policy" / "breach_policy.toml"
BASELINE_DAYS = 8


def small_options(base: Path) -> DemoOptions:
    policy_text = POLICY.read_text(encoding="utf-8")
    assert "baseline_days = 60" in policy_text and "min_baseline_denominator = 300" in policy_text
    short = policy_text.replace("baseline_days = 60", f"baseline_days = {BASELINE_DAYS}")
    short = short.replace("min_baseline_denominator = 300", "min_baseline_denominator = 100")
    (base / "policy.toml").write_text(short, encoding="utf-8")
    (base / "settings.toml").write_text('breach_policy = "policy.toml"\n', encoding="utf-8")
    return DemoOptions(
        workdir=base / "demo",
        days=20,
        sites=2,
        studies_per_day=40,
        seed=7,
        drift_site="site-02",
        drift_day=10,
        drift_magnitude=0.25,
        jsonl_outputs=True,
        config=base / "settings.toml",
    )


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The small demo run, once per test session."""
    return run_demo(small_options(tmp_path_factory.mktemp("demo")))
