"""Governance settings and the core built from them.

Settings come from ``IMGOV_*`` environment variables, then an optional TOML file
(``--config``), with defaults that fit the synthetic clinic. The pure core receives
plain, validated values (``LineageConfig``, ``KpiConfig``, a breach policy); nothing in
``streams/core`` reads the environment.

The pseudonymisation key (DESIGN §8) comes from ``IMGOV_PSEUDONYM_KEY`` or the file
named by ``IMGOV_PSEUDONYM_KEY_FILE``. Without either, only demo mode starts, with the
public demo key, and says so.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ImgovError
from schemas.validation import EventValidator
from streams.core.breach import BreachEvaluator, BreachPolicy
from streams.core.config import DAY_MS, AlgorithmEligibility, LineageConfig
from streams.core.kpi_config import KpiConfig
from streams.core.pipeline import GovernanceProcessor
from streams.core.pseudonym import Pseudonymiser
from streams.runtime.settings import REPO_ROOT

__all__ = [
    "DEFAULT_ELIGIBILITY",
    "DEFAULT_POLICY",
    "ConfigurationError",
    "GovernanceSettings",
    "build_breach_evaluator",
    "build_processor",
    "build_pseudonymiser",
    "build_validator",
    "load_settings",
    "wall_clock_ms",
]

DEFAULT_POLICY = REPO_ROOT / "infra" / "policy" / "breach_policy.toml"

DEFAULT_ELIGIBILITY: tuple[AlgorithmEligibility, ...] = (
    AlgorithmEligibility(
        algorithm_name="ich-detect", finding_code="ICH", modality="CT", body_parts=("HEAD",)
    ),
    AlgorithmEligibility(
        algorithm_name="pe-detect", finding_code="PE", modality="CT", body_parts=("CHEST",)
    ),
)
"""The algorithms of the synthetic clinic: ICH on head CT, PE on CT of the chest."""


class ConfigurationError(ImgovError):
    """The settings are missing or invalid; the message says which and how to fix it."""


class GovernanceSettings(BaseSettings):
    """What the core needs from its operator."""

    model_config = SettingsConfigDict(env_prefix="IMGOV_", extra="ignore")

    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None
    pseudonymise_study_uid: bool = False
    demo: bool = False
    lineage_retention_days: int = Field(30, gt=0)
    eligibility: tuple[AlgorithmEligibility, ...] = DEFAULT_ELIGIBILITY
    breach_policy: Path = DEFAULT_POLICY
    kpi: KpiConfig = KpiConfig()
    max_clock_skew_ms: int = Field(15 * 60_000, ge=0)


class _FileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pseudonym_key_file: Path | None = None
    pseudonymise_study_uid: bool | None = None
    lineage_retention_days: int | None = None
    eligibility: list[AlgorithmEligibility] | None = None
    breach_policy: Path | None = None
    kpi: dict[str, Any] | None = None
    max_clock_skew_ms: int | None = None


def load_settings(config_file: Path | None = None, *, demo: bool = False) -> GovernanceSettings:
    """Returns settings from the environment, overridden by ``config_file`` if given.

    Raises:
        ConfigurationError: the file is unreadable or holds an unknown or invalid key.
    """
    try:
        settings = GovernanceSettings()
        if config_file is not None:
            with config_file.open("rb") as handle:
                raw = _FileSettings.model_validate(tomllib.load(handle))
            update = raw.model_dump(exclude_none=True)
            if "kpi" in update:
                update["kpi"] = KpiConfig.model_validate(update["kpi"])
            if "eligibility" in update:
                update["eligibility"] = tuple(raw.eligibility or ())
            base = config_file.parent
            for name in ("pseudonym_key_file", "breach_policy"):
                if name in update and not Path(update[name]).is_absolute():
                    update[name] = base / update[name]
            settings = settings.model_copy(update=update)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigurationError(
            f"invalid settings ({config_file or 'environment'}): {exc}"
        ) from exc
    if demo:
        settings = settings.model_copy(update={"demo": True})
    return settings


def _key(settings: GovernanceSettings) -> bytes | None:
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode()
    if settings.pseudonym_key_file is not None:
        try:
            return settings.pseudonym_key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the pseudonymisation key file {settings.pseudonym_key_file}: {exc}"
            ) from exc
    return None


def lineage_config(settings: GovernanceSettings) -> LineageConfig:
    """Returns the join's settings.

    Raises:
        ConfigurationError: no key outside demo mode, or a key that is too short.
    """
    key = _key(settings)
    if key is None and not settings.demo:
        raise ConfigurationError(
            "no pseudonymisation key: set IMGOV_PSEUDONYM_KEY or IMGOV_PSEUDONYM_KEY_FILE "
            "(at least 32 bytes), or run the demo with --demo"
        )
    options: dict[str, Any] = {
        "lineage_retention_ms": settings.lineage_retention_days * DAY_MS,
        "eligibility": settings.eligibility,
        "pseudonymise_study_uid": settings.pseudonymise_study_uid,
        "demo": key is None,
    }
    if key is not None:
        options["pseudonym_key"] = key
    try:
        return LineageConfig(**options)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid lineage settings: {exc}") from exc


def build_breach_evaluator(settings: GovernanceSettings) -> BreachEvaluator:
    """Returns a fresh evaluator of the breach policy file of ``settings``.

    Raises:
        ConfigurationError: the policy file is missing or invalid.
    """
    try:
        policy = BreachPolicy.from_toml(settings.breach_policy.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot load the breach policy {settings.breach_policy}: {exc}"
        ) from exc
    return BreachEvaluator(policy)


def build_processor(settings: GovernanceSettings) -> GovernanceProcessor:
    """Returns a fresh core: join, KPI windows and the breach policy of ``settings``."""
    return GovernanceProcessor(
        lineage_config(settings), settings.kpi, build_breach_evaluator(settings)
    )


def build_pseudonymiser(settings: GovernanceSettings) -> Pseudonymiser:
    """Returns the pseudonymiser the join uses, for outputs that keep input events."""
    config = lineage_config(settings)
    return Pseudonymiser(
        config.pseudonym_key.get_secret_value(),
        pseudonymise_study_uid=config.pseudonymise_study_uid,
    )


def wall_clock_ms() -> int:
    """The wall clock in epoch milliseconds: the one place the runtime reads it."""
    return time.time_ns() // 1_000_000


def build_validator(settings: GovernanceSettings) -> EventValidator:
    """Returns the value rules, bounded by the wall clock plus the allowed skew."""
    return EventValidator(wall_clock_ms, max_clock_skew_ms=settings.max_clock_skew_ms)
