"""Shared runs for the simulator tests (built once per session: generation takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams.simulate.config import SimulationConfig
from streams.simulate.output import write_truth
from streams.simulate.run import SimulationRun, run_simulation

SMALL = SimulationConfig(seed=11, days=3, sites=2, studies_per_day=40)
"""A few hundred events: for format and lifecycle checks."""

LARGE = SimulationConfig(seed=2024, days=30, sites=3, studies_per_day=100)
"""About 9,000 studies: enough for the rates to sit within a few standard errors."""


@pytest.fixture(scope="session")
def small_run() -> SimulationRun:
    return run_simulation(SMALL)


@pytest.fixture(scope="session")
def large_run() -> SimulationRun:
    return run_simulation(LARGE)


@pytest.fixture(scope="session")
def large_truth_rows(
    large_run: SimulationRun, tmp_path_factory: pytest.TempPathFactory
) -> list[Any]:
    """The large run's truth file, written and read back as JSON."""
    path: Path = tmp_path_factory.mktemp("truth") / "truth.jsonl"
    write_truth(path, large_run.truths)
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
