"""Event time on a real broker: backlogs read unevenly across partitions lose nothing.

A consumer catching up reads its partitions unevenly (one partition days ahead of
another). With per-partition watermarks combined by their minimum, the results must
still equal the offline replay of the same input, and the workers must say that no
contribution came too late. Equality is on FINAL results (see ``test_live_harness``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from schemas.events import Event
from schemas.units import DAY_MS
from tests.integration.test_live_harness import (
    LiveEnv,
    assert_equal_to_replay,
    encoded,
    produce,
    simulate,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def _late_counts(env: LiveEnv) -> tuple[list[str], list[str]]:
    """The idle-close lines of every worker log: lineage stage, then KPI stage."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(env.tmp.glob("worker-*.log")))
    lineage = re.findall(r"late events so far \(lineage stage\): (\d+) after eviction", text)
    kpi = re.findall(r"late KPI contributions so far by window size: (\{[^}]*\})", text)
    return lineage, kpi


def _assert_nothing_late(env: LiveEnv) -> None:
    lineage, kpi = _late_counts(env)
    assert lineage and kpi, f"no idle-close summary in the logs\n{env.logs()}"
    assert set(lineage) == {"0"}
    assert all(re.fullmatch(r"\{('\w+': 0(, )?)+\}", counts) for counts in kpi), kpi
    assert "LATE_AFTER_WINDOW_CLOSED" not in env.logs()


def _days(events: list[Event]) -> float:
    times = [e.occurred_at_ms for e in events]
    return (max(times) - min(times)) / DAY_MS


# Two workers: 24 days. Each lineage worker expires studies by the watermark of the
# partitions it owns; at the end of a finite input, a study whose 30-day retention ends
# between one worker's last event time and the input's last would stay OPEN live where
# replay expires it (README, "Event time"). Under 30 days of event time no study
# reaches the end of its retention, so the two must be equal everywhere.
@pytest.mark.parametrize(("workers", "days"), [(1, 31), (2, 24)])
def test_a_backlog_in_one_burst_equals_offline_replay(
    live_env6: LiveEnv, tmp_path: Path, workers: int, days: int
) -> None:
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, days=days, sites=2, per_day=30, seed=41)
    assert _days(events) >= 30 if workers == 1 else _days(events) < 29
    # Everything is on the topics before a worker reads anything: a pure backlog.
    produce(live_env6.bootstrap, encoded(events, live_env6.topics))
    for n in range(workers):
        live_env6.start_worker(f"w{n + 1}")
    live_env6.wait_until_settled(timeout_s=300)
    live = assert_equal_to_replay(live_env6, events_file)
    assert live["breaches"]
    _assert_nothing_late(live_env6)


def test_a_worker_stopped_for_10_days_of_event_time_catches_up_exactly(
    live_env: LiveEnv, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, days=30, sites=2, per_day=30, seed=43)
    start = min(e.occurred_at_ms for e in events)
    # Cut the delivery order where event time reaches day 10 and day 20.
    cut1 = next(i for i, e in enumerate(events) if e.occurred_at_ms >= start + 10 * DAY_MS)
    cut2 = next(i for i, e in enumerate(events) if e.occurred_at_ms >= start + 20 * DAY_MS)
    messages = encoded(events, live_env.topics)
    # The worker is stopped before an idle close could make every window final.
    live_env.idle_close_s = 120.0
    live_env.start_worker()
    produce(live_env.bootstrap, messages[:cut1])
    _wait_for_no_lag(live_env, timeout_s=120)
    live_env.stop_worker()
    produce(live_env.bootstrap, messages[cut1:cut2])  # ten days while it is down
    live_env.idle_close_s = 20.0
    live_env.start_worker()
    produce(live_env.bootstrap, messages[cut2:])
    live_env.wait_until_settled(timeout_s=300)
    assert_equal_to_replay(live_env, events_file)
    _assert_nothing_late(live_env)


def _wait_for_no_lag(env: LiveEnv, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        env.assert_alive()
        try:
            if env.group_lag() == 0:
                return
        except Exception:  # the group is still forming
            pass
        time.sleep(0.5)
    raise AssertionError(f"the worker did not catch up in {timeout_s} s\n{env.logs()}")
