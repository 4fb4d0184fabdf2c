"""The replay with its KPI windows in a second process gives the one-process outputs."""

from __future__ import annotations

import multiprocessing.spawn
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from schemas.records import KpiValue
from schemas.units import HOUR_MS
from schemas.validation import EventValidator
from sinks.chdb import ChdbSink
from sinks.jsonl import FILE_NAMES, JsonLinesSink
from sinks.memory import MemorySink
from sinks.null import NullSink
from streams.governance import (
    DEMO_SETTINGS,
    ConfigurationError,
    GovernanceSettings,
    build_processor,
    load_settings,
)
from streams.replay.driver import replay
from streams.replay.parallel import KpiProcessError, _main_module_hidden, replay_parallel
from streams.simulate.config import DeliveryConfig, SimulationConfig
from streams.simulate.output import write_events
from streams.simulate.run import run_simulation

FAR_FUTURE_MS = 4_102_444_800_000


def _settings(**kpi: object) -> GovernanceSettings:
    settings = load_settings(DEMO_SETTINGS, demo=True)
    options = {"emit_interval_ms": None, **kpi}
    return settings.model_copy(update={"kpi": settings.kpi.model_copy(update=options)})


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six days of two sites, a fifth of the events hours late: with a one-hour late
    horizon some contributions reach closed windows (late dead letters)."""
    path = tmp_path_factory.mktemp("parallel") / "events.jsonl"
    config = SimulationConfig(
        seed=3,
        days=6,
        sites=2,
        studies_per_day=40,
        delivery=DeliveryConfig(late_rate=0.2),
    )
    write_events(path, (d.event for d in run_simulation(config).deliveries))
    return path


def _validator() -> EventValidator:
    return EventValidator(lambda: FAR_FUTURE_MS)


@pytest.mark.parametrize("chunk_size", [7, 500])
def test_outputs_and_counts_equal_the_one_process_replay(
    events: Path, tmp_path: Path, chunk_size: int
) -> None:
    settings = _settings(late_horizon_ms=HOUR_MS)
    one, two = tmp_path / "one", tmp_path / "two"
    single = JsonLinesSink(one)
    expected = replay(
        [events], build_processor(settings), single, _validator(), chunk_size=chunk_size
    )
    single.close()
    split = JsonLinesSink(two)
    got = replay_parallel([events], settings, [split], _validator(), chunk_size=chunk_size)
    split.close()

    assert expected.too_late["1d"] > 0 and expected.rejected_by_reason.get(
        "LATE_AFTER_WINDOW_CLOSED"
    )
    assert got == expected
    for name in sorted(FILE_NAMES.values()):
        before, after = (one / name).read_bytes(), (two / name).read_bytes()
        if name == "dlq.jsonl":  # late dead letters come back a batch or more later
            assert Counter(before.splitlines()) == Counter(after.splitlines())
        else:
            assert before == after, name
    assert (one / "kpi.jsonl").read_bytes().count(b"\n") == expected.kpis > 1000


def test_chdb_gets_the_kpi_rows_the_child_encoded(events: Path, tmp_path: Path) -> None:
    settings = _settings()
    jsonl = JsonLinesSink(tmp_path / "out")
    with ChdbSink(tmp_path / "chdb") as chdb:
        stats = replay_parallel([events], settings, [jsonl, chdb], _validator())
        jsonl.close()
        chdb.flush()
        _, rows = chdb.backend.execute(f"SELECT {', '.join(_KEY)} FROM kpi_values")
    values = [orjson.loads(line) for line in (tmp_path / "out" / "kpi.jsonl").open("rb")]
    assert len(values) == stats.kpis == len(rows)
    assert sorted(map(tuple, rows), key=repr) == sorted(
        (tuple(v[name] for name in _KEY) for v in values), key=repr
    )


_KEY = (
    "kpi",
    "window_size",
    "window_start_ms",
    "site_id",
    "algorithm_name",
    "algorithm_version",
    "finding_code",
    "revision",
    "final",
    "numerator",
    "denominator",
    "value",
    "p90",
)


def test_a_sink_that_cannot_take_encoded_values_is_refused(events: Path) -> None:
    with pytest.raises(ValueError, match="MemorySink cannot take KPI values encoded apart"):
        replay_parallel([events], _settings(), [MemorySink()], _validator())


def test_a_bad_policy_fails_before_any_process_starts(events: Path, tmp_path: Path) -> None:
    settings = _settings().model_copy(update={"breach_policy": tmp_path / "missing.toml"})
    with pytest.raises(ConfigurationError, match=r"missing\.toml"):
        replay_parallel([events], settings, [NullSink()], _validator())


def refuse_to_encode(value: KpiValue) -> bytes:
    """A KPI encoder that fails in the child (module level: it travels by name)."""
    raise ValueError(f"no encoding for {value.kpi} today")


class _RefusingSink(JsonLinesSink):
    kpi_encoder = staticmethod(refuse_to_encode)


def test_a_failure_in_the_kpi_process_stops_the_replay(events: Path, tmp_path: Path) -> None:
    sink = _RefusingSink(tmp_path / "out")
    with pytest.raises(KpiProcessError, match=r"^the KPI process failed: ValueError: no encoding"):
        replay_parallel([events], _settings(), [sink], _validator())


def test_the_kpi_process_does_not_run_the_main_module_again() -> None:
    """A spawned child re-runs the parent's ``__main__`` unless told there is none (for
    ``imgov`` that imports every CLI command); the parent's module stays as it was."""
    main = sys.modules["__main__"]
    before = (main.__dict__.get("__file__"), main.__dict__.get("__spec__"))
    assert {"init_main_from_path", "init_main_from_name"} & set(
        multiprocessing.spawn.get_preparation_data("probe")
    )  # pytest's own main module would be run again
    with _main_module_hidden():
        prepared = multiprocessing.spawn.get_preparation_data("probe")
    assert not {"init_main_from_path", "init_main_from_name"} & set(prepared)
    assert (main.__dict__.get("__file__"), main.__dict__.get("__spec__")) == before
