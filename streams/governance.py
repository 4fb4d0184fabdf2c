"""Governance settings and the core built from them.

Settings come from ``IMGOV_*`` environment variables, then an optional TOML file
(``--config``), with defaults that fit the synthetic clinic. The pure core receives
plain, validated values (``LineageConfig``, ``KpiConfig``, a breach policy); nothing in
``streams/core`` reads the environment.

The pseudonymisation key (DESIGN §8) comes from ``IMGOV_PSEUDONYM_KEY`` or the file
named by ``IMGOV_PSEUDONYM_KEY_FILE``. Without either, only demo mode starts, with the
public demo key, and says so.

A key file is read exactly, never stripped: a random binary key may begin or end with
bytes that look like whitespace, and each of them is part of the key. It holds either

* the raw key bytes, used exactly as they are; or
* a text key in a declared encoding, ``hex:<hex digits>`` or ``base64:<standard
  base64>`` (RFC 4648 alphabet, padded), optionally followed by one line ending (LF or
  CRLF, what ``echo`` or an editor adds), which is not part of the key. The prefix is
  required because a random binary key can look like hex or base64 text.

Refused, with a message naming the file and the fault: an empty file; a file that
starts with a prefix but does not decode (a non-hex digit, an odd number of digits,
bad base64 characters or padding, non-ASCII bytes); and a file without a prefix that
is printable ASCII followed by a line ending. The last is a text key saved by an
editor, whose line ending earlier versions stripped: taking it as key material would
silently change every pseudonym, so the operator says what the key is (a random
32-byte key looks like that with a probability below 1e-13).

``IMGOV_PSEUDONYM_KEY`` is text: its UTF-8 bytes are the key, exactly, unless it
carries one of the same two prefixes. Either way the key must then be at least
``MIN_PSEUDONYM_KEY_BYTES`` long. No error message contains key material.

The audit checkpoint key (``streams.core.lineage.anchor``), which signs the chain heads,
is a second, separate secret read the same way from ``IMGOV_CHECKPOINT_KEY`` or
``IMGOV_CHECKPOINT_KEY_FILE``, refused when it equals the pseudonymisation key, and
required outside demo mode. Keys of before a rotation, still accepted when verifying,
are in ``IMGOV_CHECKPOINT_PREVIOUS_KEYS_FILE``: one ``hex:`` or ``base64:`` key a line.
"""

from __future__ import annotations

import binascii
import gc
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ImgovError
from schemas.units import DAY_MS, MINUTE_MS
from schemas.validation import EventValidator
from streams.core.kpi.breach import BreachEvaluator, BreachPolicy
from streams.core.kpi.config import KpiConfig
from streams.core.lineage.anchor import DEMO_CHECKPOINT_KEY, CheckpointKey, CheckpointKeyring
from streams.core.lineage.config import AlgorithmEligibility, LineageConfig
from streams.core.lineage.pseudonym import Pseudonymiser
from streams.core.pipeline import GovernanceProcessor
from streams.paths import REPO_ROOT

__all__ = [
    "DEFAULT_ELIGIBILITY",
    "DEFAULT_POLICY",
    "DEMO_SETTINGS",
    "ConfigurationError",
    "GovernanceSettings",
    "build_breach_evaluator",
    "build_processor",
    "build_pseudonymiser",
    "build_validator",
    "checkpoint_keyring",
    "load_breach_policy",
    "load_settings",
    "settings_from_mapping",
    "tune_garbage_collector",
    "wall_clock_ms",
]

DEFAULT_POLICY = REPO_ROOT / "infra" / "policy" / "breach_policy.toml"

DEFAULT_ELIGIBILITY: tuple[AlgorithmEligibility, ...] = ()
"""No coverage expectations unless the operator declares them (``[[eligibility]]``):
coverage is the share of the studies an algorithm is configured to read that it read,
and only the operator knows which those are."""

DEMO_SETTINGS = REPO_ROOT / "infra" / "demo" / "governance.toml"
"""The settings of the synthetic clinic ``imgov demo`` simulates (its eligibility)."""


class ConfigurationError(ImgovError):
    """The settings are missing or invalid; the message says which and how to fix it."""


class GovernanceSettings(BaseSettings):
    """What the core needs from its operator."""

    model_config = SettingsConfigDict(env_prefix="IMGOV_", extra="ignore")

    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None
    checkpoint_key: SecretStr | None = None
    checkpoint_key_file: Path | None = None
    checkpoint_previous_keys_file: Path | None = None
    pseudonymise_study_uid: bool = False
    demo: bool = False
    lineage_retention_days: int = Field(30, gt=0)
    eligibility: tuple[AlgorithmEligibility, ...] = DEFAULT_ELIGIBILITY
    breach_policy: Path = DEFAULT_POLICY
    kpi: KpiConfig = KpiConfig()
    max_clock_skew_ms: int = Field(15 * MINUTE_MS, ge=0)


class _FileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pseudonym_key_file: Path | None = None
    checkpoint_key_file: Path | None = None
    checkpoint_previous_keys_file: Path | None = None
    pseudonymise_study_uid: bool | None = None
    lineage_retention_days: int | None = None
    eligibility: list[AlgorithmEligibility] | None = None
    breach_policy: Path | None = None
    kpi: dict[str, Any] | None = None
    max_clock_skew_ms: int | None = None


def load_settings(config_file: Path | None = None, *, demo: bool = False) -> GovernanceSettings:
    """Returns settings from the environment, overridden by ``config_file`` if given.

    Relative paths in the file resolve against the file's folder.

    Raises:
        ConfigurationError: the file is unreadable or holds an unknown or invalid key.
    """
    if config_file is None:
        return settings_from_mapping({}, Path(), source="environment", demo=demo)
    try:
        with config_file.open("rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"invalid settings ({config_file}): {exc}") from exc
    return settings_from_mapping(raw, config_file.parent, source=config_file, demo=demo)


def settings_from_mapping(
    raw: Mapping[str, Any], base_dir: Path, *, source: Path | str, demo: bool = False
) -> GovernanceSettings:
    """Returns settings from the environment, overridden by the keys of a parsed file.

    Called by :func:`load_settings`, and by the worker, whose file also holds a
    ``[worker]`` table that it removes first.

    Args:
        raw: the governance keys and tables of a TOML file, as ``tomllib`` parsed them.
        base_dir: the folder that relative ``pseudonym_key_file`` and ``breach_policy``
            paths resolve against: the file's.
        source: names the file (or ``"environment"``) in error messages.
        demo: run with the public demo key when no key is configured.

    Raises:
        ConfigurationError: an unknown or invalid key, or an invalid ``IMGOV_*`` variable.
    """
    try:
        settings = GovernanceSettings()
        if raw:
            parsed = _FileSettings.model_validate(raw)
            update = parsed.model_dump(exclude_none=True)
            if "kpi" in update:
                update["kpi"] = KpiConfig.model_validate(update["kpi"])
            if "eligibility" in update:
                update["eligibility"] = tuple(parsed.eligibility or ())
            for name in (
                "pseudonym_key_file",
                "checkpoint_key_file",
                "checkpoint_previous_keys_file",
                "breach_policy",
            ):
                if name in update and not Path(update[name]).is_absolute():
                    update[name] = base_dir / update[name]
            settings = settings.model_copy(update=update)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid settings ({source}): {exc}") from exc
    if demo:
        settings = settings.model_copy(update={"demo": True})
    return settings


class _TextKeyEncoding(NamedTuple):
    """A declared text encoding of a key: its prefix, name, the text it expects and a
    strict decoder (raising ``binascii.Error``)."""

    prefix: bytes
    name: str
    expected: str
    decode: Callable[[bytes], bytes]


_TEXT_KEY_ENCODINGS = (
    _TextKeyEncoding(b"hex:", "hex", "an even number of hex digits", binascii.a2b_hex),
    _TextKeyEncoding(
        b"base64:",
        "base64",
        "standard base64 with its '=' padding",
        lambda text: binascii.a2b_base64(text, strict_mode=True),
    ),
)

_PRINTABLE_ASCII = frozenset(range(0x20, 0x7F))


def _without_line_ending(data: bytes) -> tuple[bytes, bool]:
    """Returns ``data`` without one final line ending (CRLF or LF), and whether it had one."""
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            return data[: -len(ending)], True
    return data, False


def _declared_text_key(raw: bytes, source: str, what: str = "pseudonymisation key") -> bytes | None:
    """Returns the key that a ``hex:`` or ``base64:`` text declares, decoded.

    Args:
        raw: the key file's bytes or the UTF-8 bytes of ``IMGOV_PSEUDONYM_KEY``, unstripped.
        source: names the origin in error messages (a path or a variable, never the key).

    Returns:
        The decoded key, or None when ``raw`` starts with neither prefix.

    Raises:
        ConfigurationError: ``raw`` starts with a prefix but does not follow its encoding.
    """
    encoding = next((e for e in _TEXT_KEY_ENCODINGS if raw.startswith(e.prefix)), None)
    if encoding is None:
        return None
    prefix = encoding.prefix.decode()
    text, _ = _without_line_ending(raw[len(encoding.prefix) :])
    if not text:
        problem = f"nothing after '{prefix}'"
    elif not text.isascii():
        problem = "non-ASCII bytes"
    else:
        try:
            return encoding.decode(text)
        except binascii.Error as exc:
            # binascii's messages describe the fault and never quote the input.
            problem = str(exc)
    raise ConfigurationError(
        f"the {what} in {source} is not valid {encoding.name}: {problem} "
        f"(expected '{prefix}' then {encoding.expected}, on one line)"
    )


def _file_key(path: Path, what: str = "pseudonymisation key") -> bytes:
    """Returns the key held by the key file at ``path``, as the module docstring describes.

    Raises:
        ConfigurationError: the file is unreadable, empty, declares an encoding it does
            not follow, or is a text key and a line ending without a declared encoding.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path}: {exc}") from exc
    source = f"the key file {path}"
    if not raw:
        raise ConfigurationError(f"the {what} in {source} is empty")
    declared = _declared_text_key(raw, source, what)
    if declared is not None:
        return declared
    body, had_line_ending = _without_line_ending(raw)
    if had_line_ending and body and set(body) <= _PRINTABLE_ASCII:
        # Earlier versions stripped this line ending; keeping it would silently change
        # every pseudonym, so the operator decides what the key is.
        raise ConfigurationError(
            f"the {what} in {source} is text followed by a line ending; "
            "key files are read exactly, so write the key as 'hex:<digits>' or "
            "'base64:<text>', or save it without the line ending"
        )
    return raw  # raw key bytes, exactly: whitespace bytes are key material too


def _key(settings: GovernanceSettings) -> bytes | None:
    """Returns the configured key bytes, or None when neither setting names a key.

    ``IMGOV_PSEUDONYM_KEY`` wins over the key file; the length check is left to
    :class:`LineageConfig`.

    Raises:
        ConfigurationError: the key file is unreadable or empty, or a key is malformed.
    """
    if settings.pseudonym_key is not None:
        text = settings.pseudonym_key.get_secret_value().encode()
        declared = _declared_text_key(text, "IMGOV_PSEUDONYM_KEY")
        return text if declared is None else declared
    if settings.pseudonym_key_file is not None:
        return _file_key(settings.pseudonym_key_file)
    return None


def _checkpoint_key(settings: GovernanceSettings) -> bytes | None:
    """Returns the configured checkpoint key bytes, or None (as :func:`_key` does)."""
    what = "checkpoint key"
    if settings.checkpoint_key is not None:
        text = settings.checkpoint_key.get_secret_value().encode()
        declared = _declared_text_key(text, "IMGOV_CHECKPOINT_KEY", what)
        return text if declared is None else declared
    if settings.checkpoint_key_file is not None:
        return _file_key(settings.checkpoint_key_file, what)
    return None


def _previous_checkpoint_keys(path: Path) -> list[bytes]:
    """Returns the keys of a previous-keys file: one ``hex:``/``base64:`` key a line."""
    what = "previous checkpoint key"
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what}s file {path}: {exc}") from exc
    keys = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        declared = _declared_text_key(line, f"{path} line {number}", what)
        if declared is None:
            raise ConfigurationError(
                f"the {what} on {path} line {number} must be written 'hex:<digits>' or "
                "'base64:<text>'"
            )
        keys.append(declared)
    return keys


def checkpoint_keyring(settings: GovernanceSettings) -> CheckpointKeyring:
    """Returns the audit checkpoint keys: the current one and those still accepted.

    The checkpoint key must not equal the pseudonymisation key: one leaked secret must
    not give away the other's job.

    Raises:
        ConfigurationError: no key outside demo mode, a key that is too short, equal to
            the pseudonymisation key, unreadable or malformed.
    """
    key = _checkpoint_key(settings)
    if key is None and not settings.demo:
        raise ConfigurationError(
            "no audit checkpoint key: set IMGOV_CHECKPOINT_KEY or IMGOV_CHECKPOINT_KEY_FILE "
            "(at least 32 bytes, not the pseudonymisation key), or run the demo with --demo"
        )
    previous = []
    if settings.checkpoint_previous_keys_file is not None:
        previous = _previous_checkpoint_keys(settings.checkpoint_previous_keys_file)
    try:
        current = CheckpointKey(DEMO_CHECKPOINT_KEY if key is None else key)
        ring = CheckpointKeyring(current, tuple(CheckpointKey(k) for k in previous))
    except ValueError as exc:
        raise ConfigurationError(f"invalid checkpoint key: {exc}") from exc
    if key is not None and key == _key(settings):
        raise ConfigurationError(
            "the checkpoint key must not be the pseudonymisation key: generate a separate one"
        )
    return ring


def lineage_config(settings: GovernanceSettings) -> LineageConfig:
    """Returns the join's settings.

    Raises:
        ConfigurationError: no key outside demo mode, a key that is too short, an
            unreadable key file or a malformed key (see the module docstring).
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


def load_breach_policy(path: Path) -> BreachPolicy:
    """Reads a breach policy file.

    Raises:
        ConfigurationError: the file is missing, not TOML or not a valid policy.
    """
    try:
        return BreachPolicy.from_toml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the breach policy {path}: {exc}") from exc


def build_breach_evaluator(settings: GovernanceSettings) -> BreachEvaluator:
    """Returns a fresh evaluator of the breach policy file of ``settings``.

    Raises:
        ConfigurationError: the policy file is missing or invalid.
    """
    return BreachEvaluator(load_breach_policy(settings.breach_policy))


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


GC_THRESHOLDS = (50_000, 20, 100)
"""Generation thresholds of the cyclic garbage collector for every command."""


def tune_garbage_collector() -> None:
    """Makes the cyclic garbage collector run about 70 times less often.

    The pipeline holds hundreds of thousands of long-lived objects (lineage state, KPI
    panes) and allocates short-lived ones by the million; with CPython's default
    threshold (a collection every 700 net allocations) the collector walked them over
    and over and took 30% of a replay (demo stream with no sink: 5.2 s, 3.7 s with
    these thresholds). Reference counting frees nearly everything the pipeline drops;
    the collector only has cycles left to find, and ``freeze`` takes what is loaded at
    start (modules, settings) out of its walks for good.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
