"""Building a ``SimulationConfig`` from a file and command-line overrides.

The file (JSON or TOML, any subset of ``SimulationConfig``'s fields) is the base;
every option given on the command line replaces the value it names. Kept apart from
the Typer command so the rules can be tested without a CLI runner.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.events import AlertChannel
from streams.simulate.config import DriftKind, SimulationConfig, site_id_for

__all__ = ["ConfigError", "Overrides", "build_config", "parse_start_ms"]


class ConfigError(ValueError):
    """The configuration file or an option is invalid; the message says which and why."""


@dataclass(frozen=True)
class Overrides:
    """Command-line values; None (or empty) means "keep the file's or the default value"."""

    seed: int | None = None
    days: int | None = None
    sites: int | None = None
    studies_per_day: float | None = None
    start: str | None = None
    algorithms: Sequence[str] = ()
    """Names or finding codes of the algorithms to keep (empty: all)."""
    prevalence: Mapping[str, float] = field(default_factory=dict)
    sensitivity: Mapping[str, float] = field(default_factory=dict)
    specificity: Mapping[str, float] = field(default_factory=dict)
    failure_rate: Mapping[str, float] = field(default_factory=dict)
    drift_site: str | None = None
    drift_day: int | None = None
    drift_kind: DriftKind | None = None
    drift_magnitude: float | None = None
    drift_finding: str | None = None
    scanner_change_site: str | None = None
    scanner_change_day: int | None = None
    scanner_manufacturer: str | None = None
    scanner_shift: float | None = None
    unanswered_channels: Sequence[AlertChannel] = ()
    duplicate_rate: float | None = None
    late_rate: float | None = None
    drop_rate: float | None = None
    addendum_rate: float | None = None


def parse_start_ms(text: str) -> int:
    """Epoch ms of an ISO date or date-time; a value without a zone is UTC.

    Raises:
        ConfigError: not an ISO 8601 date.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--start {text!r} is not an ISO date (e.g. 2026-01-01)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_assignments(values: Sequence[str], option: str) -> dict[str, float]:
    """``["ICH=0.1", "PE=0.2"]`` -> ``{"ICH": 0.1, "PE": 0.2}``.

    Raises:
        ConfigError: an item is not ``NAME=NUMBER``.
    """
    parsed: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(value)
            parsed[name.strip()] = float(number)
        except ValueError as exc:
            raise ConfigError(f"{option} {value!r}: expected FINDING=NUMBER, e.g. ICH=0.1") from exc
    return parsed


def _load_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold an object of SimulationConfig fields")
    return data


def _site(value: str) -> str:
    return site_id_for(int(value)) if value.isdigit() else value


def build_config(file: Path | None, overrides: Overrides) -> SimulationConfig:
    """The effective configuration: defaults, then ``file``, then ``overrides``.

    Raises:
        ConfigError: the file is unreadable, or the result is not a valid configuration.
    """
    try:
        base = SimulationConfig.model_validate(_load_file(file) if file is not None else {})
        data = base.model_dump()
        _apply(data, base, overrides)
        return SimulationConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid simulation settings: {problems}") from exc


def _apply(data: dict[str, Any], base: SimulationConfig, o: Overrides) -> None:
    scalars = {
        "seed": o.seed,
        "days": o.days,
        "sites": o.sites,
        "studies_per_day": o.studies_per_day,
    }
    data.update({k: v for k, v in scalars.items() if v is not None})
    if o.start is not None:
        data["start_ms"] = parse_start_ms(o.start)

    algorithms = list(data["algorithms"])
    if o.algorithms:
        wanted = {a.strip() for a in o.algorithms if a.strip()}
        known = {a["name"] for a in algorithms} | {a["finding_code"] for a in algorithms}
        if unknown := sorted(wanted - known):
            raise ConfigError(f"unknown algorithm(s) {', '.join(unknown)}; known: {sorted(known)}")
        algorithms = [a for a in algorithms if {a["name"], a["finding_code"]} & wanted]
    per_algorithm = {
        "prevalence": o.prevalence,
        "sensitivity": o.sensitivity,
        "specificity": o.specificity,
        "failure_rate": o.failure_rate,
    }
    for knob, values in per_algorithm.items():
        for key, value in values.items():
            matches = [a for a in algorithms if key in (a["name"], a["finding_code"])]
            if not matches:
                raise ConfigError(f"--{knob.replace('_', '-')} {key}=...: no such algorithm")
            for algorithm in matches:
                algorithm[knob] = value
    data["algorithms"] = algorithms

    if o.drift_site is not None or o.drift_day is not None:
        if o.drift_site is None or o.drift_day is None:
            raise ConfigError("a drift needs both --drift-site and --drift-day")
        drift: dict[str, Any] = {"site_id": _site(o.drift_site), "start_day": o.drift_day}
        if o.drift_kind is not None:
            drift["kind"] = o.drift_kind
        if o.drift_magnitude is not None:
            drift["magnitude"] = o.drift_magnitude
        if o.drift_finding is not None:
            drift["finding_code"] = o.drift_finding
        data["drifts"] = [*data["drifts"], drift]

    if o.scanner_change_site is not None or o.scanner_change_day is not None:
        if o.scanner_change_site is None or o.scanner_change_day is None:
            raise ConfigError(
                "a scanner change needs --scanner-change-site and --scanner-change-day"
            )
        change: dict[str, Any] = {
            "site_id": _site(o.scanner_change_site),
            "start_day": o.scanner_change_day,
        }
        if o.scanner_manufacturer is not None:
            change["manufacturer"] = o.scanner_manufacturer
        if o.scanner_shift is not None:
            change["score_shift"] = o.scanner_shift
        data["scanner_changes"] = [*data["scanner_changes"], change]

    if o.unanswered_channels:
        merged = dict.fromkeys([*base.unanswered_channels, *o.unanswered_channels])
        data["unanswered_channels"] = list(merged)

    delivery = {
        "duplicate_rate": o.duplicate_rate,
        "late_rate": o.late_rate,
        "drop_rate": o.drop_rate,
    }
    data["delivery"].update({k: v for k, v in delivery.items() if v is not None})
    if o.addendum_rate is not None:
        data["report"]["addendum_rate"] = o.addendum_rate
