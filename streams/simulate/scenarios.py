"""Scenario effects: what drift and scanner changes do to one site on one day.

The generator asks ``conditions_for`` once per site and day and applies the answer to
every study of that day, so a scenario only ever touches its own site from its own day.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.simulate.config import DriftKind, SimulationConfig, site_id_for

__all__ = ["AlgorithmConditions", "SiteDayConditions", "conditions_for"]


@dataclass(frozen=True, slots=True)
class AlgorithmConditions:
    """How one algorithm behaves at a site on a day."""

    score_shift: float = 0.0
    """Added to every score before thresholding (drift plus scanner change)."""
    specificity_drop: float = 0.0
    """Subtracted from the configured specificity."""
    drifted: bool = False
    """A drift scenario applies (the scanner change alone does not count)."""


_UNCHANGED = AlgorithmConditions()


@dataclass(frozen=True, slots=True)
class SiteDayConditions:
    """The scanner and per-algorithm behaviour at one site on one day."""

    manufacturer: str
    scanner_changed: bool
    algorithms: dict[str, AlgorithmConditions]
    """Keyed by algorithm name; every configured algorithm is present."""


def conditions_for(config: SimulationConfig, site_index: int, day: int) -> SiteDayConditions:
    """The conditions at the 1-based site ``site_index`` on the 0-based ``day``.

    Several drifts on the same algorithm add up; of several scanner changes at a site,
    the one that started last is in service.
    """
    site_id = site_id_for(site_index)
    manufacturer = config.manufacturers[(site_index - 1) % len(config.manufacturers)]
    scanner_shift = 0.0
    scanner_changed = False
    changes = [c for c in config.scanner_changes if c.site_id == site_id and c.start_day <= day]
    if changes:
        current = max(changes, key=lambda c: c.start_day)
        manufacturer = current.manufacturer
        scanner_shift = current.score_shift
        scanner_changed = True

    algorithms: dict[str, AlgorithmConditions] = {}
    for algorithm in config.algorithms:
        shift = scanner_shift
        drop = 0.0
        drifted = False
        for drift in config.drifts:
            applies = (
                drift.site_id == site_id
                and drift.start_day <= day
                and drift.finding_code in (None, algorithm.finding_code)
            )
            if not applies:
                continue
            drifted = True
            if drift.kind is DriftKind.SCORE_SHIFT:
                shift += drift.magnitude
            else:
                drop += drift.magnitude
        if shift or drop or drifted:
            algorithms[algorithm.name] = AlgorithmConditions(shift, drop, drifted)
        else:
            algorithms[algorithm.name] = _UNCHANGED
    return SiteDayConditions(manufacturer, scanner_changed, algorithms)
