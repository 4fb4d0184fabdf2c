"""Helpers of the tests that use the real Prometheus and Alertmanager (no tests here).

Both run as plain processes started by ``infra/prometheus/prometheus.sh`` (``make up``),
on 127.0.0.1:19090 and 127.0.0.1:19094, scraping every second and evaluating rules every
second. The helpers:

- start them (``start_monitoring``, ``require_monitoring`` for fixtures: skip locally,
  fail in CI when they cannot start);
- point Prometheus at a test's processes through the file_sd target files, atomically
  (``add_scrape_target``, ``remove_scrape_target``, ``wait_for_target``);
- load extra rule files (``load_rules``, ``unload_rules``; ``scaled_rules`` rewrites
  the shipped rules' durations so that a 10-minute alert fires in 10 s);
- read what Prometheus and Alertmanager hold (``query``, ``alerts``, ``rule_groups``,
  ``targets``, ``alertmanager_alerts``), and ``wait_for`` a condition on them.

Prometheus re-reads a target file when it changes, but publishes the new targets at
most every 5 s: a new target is scraped within ~6 s (``wait_for_target``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schemas.errors import ImgovError
from streams.paths import REPO_ROOT

__all__ = [
    "ALERTMANAGER_URL",
    "EXTRA_RULES_DIR",
    "JOBS",
    "PROMETHEUS_SCRIPT",
    "PROMETHEUS_STATE",
    "PROMETHEUS_URL",
    "RENDERED_CONFIG",
    "RULES_DIR",
    "TARGETS_DIR",
    "MonitoringError",
    "add_scrape_target",
    "alertmanager_alerts",
    "alertmanager_status",
    "alerts",
    "load_rules",
    "query",
    "reload",
    "remove_scrape_target",
    "require_monitoring",
    "require_tool",
    "rule_groups",
    "scaled_duration",
    "scaled_rules",
    "scrape_target",
    "start_monitoring",
    "targets",
    "unload_rules",
    "wait_for",
    "wait_for_target",
]

HOST = "127.0.0.1"
PROMETHEUS_PORT = int(os.environ.get("IMGOV_PROMETHEUS_PORT", "19090"))
ALERTMANAGER_PORT = int(os.environ.get("IMGOV_ALERTMANAGER_PORT", "19094"))
PROMETHEUS_URL = f"http://{HOST}:{PROMETHEUS_PORT}"
ALERTMANAGER_URL = f"http://{HOST}:{ALERTMANAGER_PORT}"

PROMETHEUS_DIR = REPO_ROOT / "infra" / "prometheus"
PROMETHEUS_SCRIPT = PROMETHEUS_DIR / "prometheus.sh"
RULES_DIR = PROMETHEUS_DIR / "rules"
"""The shipped rules (``imgov.yml``), loaded by every Prometheus of this checkout."""

PROMETHEUS_STATE = REPO_ROOT / ".imgov" / "services" / "prometheus"
RENDERED_CONFIG = PROMETHEUS_STATE / "prometheus.yml"
TARGETS_DIR = PROMETHEUS_STATE / "targets"
"""``<job>.json`` file_sd files, one per scrape job."""
EXTRA_RULES_DIR = PROMETHEUS_STATE / "rules.d"
"""Rule files the tests load (``load_rules``), read besides ``RULES_DIR``."""

JOBS = ("imgov-worker", "imgov-gateway", "imgov-alerts")
"""The scrape jobs of infra/prometheus/prometheus.yml."""

BINARIES = ("prometheus", "promtool", "prometheus-alertmanager", "amtool")

T = TypeVar("T")


class MonitoringError(ImgovError):
    """Prometheus or Alertmanager could not be started, reached or reloaded."""


# --- start ---------------------------------------------------------------------------


def start_monitoring(timeout_s: float = 60) -> None:
    """Starts Prometheus and Alertmanager with the script; a no-op when they run with
    the current configuration (the script reloads one whose configuration changed).

    Raises:
        MonitoringError: not installed (``make monitoring-tools``), or the script failed;
            the message holds its output.
    """
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise MonitoringError(
            f"{', '.join(missing)} not installed; run `make monitoring-tools` "
            f"(bash {PROMETHEUS_SCRIPT.relative_to(REPO_ROOT)} install, as root)"
        )
    try:
        done = subprocess.run(
            ["bash", str(PROMETHEUS_SCRIPT), "start"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MonitoringError(f"prometheus.sh start did not finish in {timeout_s}s") from exc
    if done.returncode != 0:
        raise MonitoringError(
            f"prometheus.sh start exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _skip_or_fail(message: str) -> None:
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_monitoring() -> None:
    """``start_monitoring`` for fixtures: skips the test locally, fails it in CI."""
    try:
        start_monitoring()
    except MonitoringError as exc:
        _skip_or_fail(str(exc))


def require_tool(name: str) -> str:
    """The path of ``promtool``, ``amtool``...; skips the test locally, fails it in CI,
    when it is not installed."""
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(f"{name} is not installed; run `make monitoring-tools`")
    assert path is not None
    return path


# --- HTTP ------------------------------------------------------------------------------


def _request(method: str, url: str, timeout_s: float = 10) -> Any:
    """The decoded JSON answer of ``method url`` (None when the body is not JSON)."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise MonitoringError(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
    except OSError as exc:
        raise MonitoringError(f"{method} {url}: {exc}") from exc
    try:
        return json.loads(body)
    except ValueError:
        return None


def _prometheus_api(path: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer.

    Raises:
        MonitoringError: unreachable, or the API answered with an error.
    """
    url = f"{PROMETHEUS_URL}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    answer = _request("GET", url)
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise MonitoringError(f"GET {url}: {answer}")
    return answer["data"]


def reload() -> None:
    """Makes Prometheus re-read its configuration and rule files (``/-/reload``).

    Raises:
        MonitoringError: a file is invalid (the message is Prometheus's) or it is down.
    """
    _request("POST", f"{PROMETHEUS_URL}/-/reload")


def query(promql: str) -> list[dict[str, Any]]:
    """An instant query's result: ``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``
    (a scalar or string result is returned as a one-element list of its value)."""
    data = _prometheus_api("/api/v1/query", query=promql)
    result = data["result"]
    return result if data["resultType"] in ("vector", "matrix") else [result]


def alerts(state: str | None = None) -> list[dict[str, Any]]:
    """Prometheus's active alerts (``/api/v1/alerts``), of ``state`` ("pending",
    "firing") when given; each has ``labels``, ``annotations``, ``state``, ``value``."""
    found: list[dict[str, Any]] = _prometheus_api("/api/v1/alerts")["alerts"]
    return [a for a in found if state is None or a["state"] == state]


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups Prometheus has loaded (``/api/v1/rules``): ``name``, ``file``,
    ``rules`` (each with ``name``, ``type``, ``health``, ``lastError``)."""
    groups: list[dict[str, Any]] = _prometheus_api("/api/v1/rules")["groups"]
    return groups


def targets() -> list[dict[str, Any]]:
    """The active scrape targets (``labels``, ``scrapeUrl``, ``health``, ``lastError``)."""
    active: list[dict[str, Any]] = _prometheus_api("/api/v1/targets", state="active")[
        "activeTargets"
    ]
    return active


def alertmanager_status() -> dict[str, Any]:
    """Alertmanager's ``/api/v2/status``: ``cluster``, ``config`` (``original``),
    ``uptime``, ``versionInfo``."""
    status: dict[str, Any] = _request("GET", f"{ALERTMANAGER_URL}/api/v2/status")
    return status


def alertmanager_alerts(
    matchers: Mapping[str, str] | None = None, include_suppressed: bool = False
) -> list[dict[str, Any]]:
    """Alertmanager's alerts (``/api/v2/alerts``) whose labels equal ``matchers``.

    Each has ``labels``, ``annotations``, ``status`` (``state``: active, suppressed,
    unprocessed), ``startsAt`` and ``endsAt``. Silenced and inhibited alerts only with
    ``include_suppressed``.
    """
    params = [("filter", f"{name}={json.dumps(value)}") for name, value in (matchers or {}).items()]
    if not include_suppressed:
        params += [("silenced", "false"), ("inhibited", "false")]
    url = f"{ALERTMANAGER_URL}/api/v2/alerts"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    found: list[dict[str, Any]] = _request("GET", url)
    return found


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 30, interval: float = 0.2, what: str = ""
) -> T:
    """Calls ``predicate`` until it returns something truthy, and returns that.

    A ``MonitoringError`` from the predicate (a server restarting) counts as not yet.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds; names ``what`` and the
            last value (or error) seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except MonitoringError as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}"
            )
        time.sleep(interval)


# --- scrape targets ------------------------------------------------------------------


@contextmanager
def _locked_targets(job: str) -> Iterator[Path]:
    """Holds an exclusive lock on the job's target file (tests may run in parallel)."""
    if job not in JOBS:
        raise ValueError(f"unknown scrape job {job!r}; the configuration has {JOBS}")
    TARGETS_DIR.mkdir(parents=True, exist_ok=True)
    with (TARGETS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield TARGETS_DIR / f"{job}.json"


def _read_groups(path: Path) -> list[dict[str, Any]]:
    try:
        groups: list[dict[str, Any]] = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return groups


def _write_groups(path: Path, groups: list[dict[str, Any]]) -> None:
    # Prometheus watches the file: it must never see half of one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, path)


def add_scrape_target(job: str, address: str, labels: Mapping[str, str] | None = None) -> None:
    """Adds ``address`` (``127.0.0.1:PORT``) to a job's targets, with extra ``labels``;
    replaces an entry for the same address. Scraped within ~6 s (``wait_for_target``).

    Raises:
        ValueError: an unknown job, or an address not on 127.0.0.1.
    """
    if not address.startswith(f"{HOST}:"):
        raise ValueError(f"scrape targets must be on {HOST}, not {address!r}")
    with _locked_targets(job) as path:
        groups = [g for g in _read_groups(path) if address not in g.get("targets", [])]
        groups.append({"targets": [address], "labels": dict(labels or {})})
        _write_groups(path, groups)


def remove_scrape_target(job: str, address: str) -> None:
    """Removes ``address`` from a job's targets (a no-op when it is not there)."""
    with _locked_targets(job) as path:
        groups = _read_groups(path)
        kept = [g for g in groups if address not in g.get("targets", [])]
        if kept != groups:
            _write_groups(path, kept)


@contextmanager
def scrape_target(
    job: str, address: str, labels: Mapping[str, str] | None = None
) -> Iterator[None]:
    """``add_scrape_target`` for the duration of a ``with`` block."""
    add_scrape_target(job, address, labels)
    try:
        yield
    finally:
        remove_scrape_target(job, address)


def wait_for_target(
    job: str, address: str, health: str = "up", timeout: float = 30
) -> dict[str, Any]:
    """Waits until Prometheus has scraped ``address`` in ``job`` with that health
    ("up", "down"); returns the target."""

    def found() -> dict[str, Any] | None:
        for target in targets():
            labels = target["labels"]
            if (
                labels.get("job") == job
                and labels.get("instance") == address
                and target["health"] == health
            ):
                return target
        return None

    return wait_for(found, timeout, what=f"target {address} of {job} to be {health}")


# --- rules -----------------------------------------------------------------------------

_RULE_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_rules(text: str, name: str = "test") -> Path:
    """Writes ``text`` as rule file ``rules.d/<name>.yml`` and reloads Prometheus.

    Returns:
        The file written (``unload_rules(name)`` deletes it).

    Raises:
        MonitoringError: Prometheus refused the rules (it keeps the previous ones; the
            file is removed again).
    """
    if not _RULE_FILE_NAME.match(name):
        raise ValueError(f"not a plain file name: {name!r}")
    EXTRA_RULES_DIR.mkdir(parents=True, exist_ok=True)
    path = EXTRA_RULES_DIR / f"{name}.yml"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    try:
        reload()
    except MonitoringError:
        path.unlink(missing_ok=True)
        reload()
        raise
    return path


def unload_rules(name: str = "test") -> None:
    """Deletes ``rules.d/<name>.yml`` (if present) and reloads Prometheus."""
    (EXTRA_RULES_DIR / f"{name}.yml").unlink(missing_ok=True)
    reload()


# --- duration scaling ------------------------------------------------------------------

_UNITS_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
_DURATION = r"(?:\d+(?:ms|[ywdhms]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[ywdhms])")
# `for:`, `keep_firing_for:` and a group's `interval:` in a rule file.
_FIELD = re.compile(
    rf"^(?P<head>[ \t]*-?[ \t]*(?:for|keep_firing_for|interval):[ \t]*)"
    rf"(?P<q>[\"']?)(?P<d>{_DURATION})(?P=q)(?=[ \t]*(?:#.*)?$)",
    re.MULTILINE,
)
# A range `[5m]` or a subquery `[10m:1m]` / `[10m:]`.
_RANGE = re.compile(rf"\[(?P<range>{_DURATION})(?::(?P<step>{_DURATION})?)?\]")
_OFFSET = re.compile(rf"\boffset(?P<sp>\s+)(?P<sign>-?)(?P<d>{_DURATION})")


def _parse_ms(duration: str) -> int:
    return sum(int(n) * _UNITS_MS[unit] for n, unit in _DURATION_PART.findall(duration))


def _format_ms(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def scaled_duration(duration: str, factor: float) -> str:
    """A Prometheus duration multiplied by ``factor``, rounded to the millisecond
    (at least 1 ms): ``scaled_duration("10m", 1 / 60) == "10s"``."""
    if not re.fullmatch(_DURATION, duration):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    if factor <= 0:
        raise ValueError(f"the factor must be positive, not {factor}")
    return _format_ms(max(1, round(_parse_ms(duration) * factor)))


def scaled_rules(text: str, factor: float) -> str:
    """Rule file ``text`` with every duration multiplied by ``factor``.

    Rewrites the ``for:``, ``keep_firing_for:`` and group ``interval:`` fields, range
    selectors (``[10m]``), subqueries (``[10m:1m]``, ``[10m:]``) and ``offset``
    modifiers; anything else, comments and layout included, is kept. With
    ``factor=1/60`` an alert that fires after 10 minutes fires after 10 s; keep the
    scaled ranges several scrape intervals long (the dev Prometheus scrapes every 1 s).

    Raises:
        ValueError: ``factor`` is not positive.
    """
    if factor <= 0:
        raise ValueError(f"the factor must be positive, not {factor}")

    def field(m: re.Match[str]) -> str:
        return f"{m['head']}{m['q']}{scaled_duration(m['d'], factor)}{m['q']}"

    def range_(m: re.Match[str]) -> str:
        scaled = scaled_duration(m["range"], factor)
        if m["step"] is not None:
            return f"[{scaled}:{scaled_duration(m['step'], factor)}]"
        return f"[{scaled}:]" if m[0].endswith(":]") else f"[{scaled}]"

    def offset(m: re.Match[str]) -> str:
        return f"offset{m['sp']}{m['sign']}{scaled_duration(m['d'], factor)}"

    text = _FIELD.sub(field, text)
    text = _RANGE.sub(range_, text)
    return _OFFSET.sub(offset, text)
