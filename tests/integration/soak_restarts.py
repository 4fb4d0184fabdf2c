"""``make soak``: the kill -9 restart test, repeated with random kill moments.

Each round gets its own topics, group, state and databases: a 12-day stream is
produced at a steady rate while the worker is killed (SIGKILL) three times at random
moments and restarted 2-5 s later with the same state; once the input is consumed the
audit tables are compared with ``imgov replay`` of the same stream. Per round it prints
the seconds each restart took to resume processing and whether the result equals the
replay. Not part of ``make test`` (about 2 minutes a round); needs ``make up``.

    .venv/bin/python -m tests.integration.soak_restarts --rounds 10 [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.test_live_harness import (
    LiveEnv,
    RateProducer,
    diff_summary,
    encoded,
    final_tables,
    opened,
    produce,
    replay_into,
    simulate,
)

RESUME_TARGET_S = 10.0
WARM_UP = 100
"""Messages produced before the rest, to see the worker running before it is stopped."""


def soak_round(bootstrap: str, tmp: Path, seed: int) -> tuple[list[float], bool, str]:
    """One round; returns the resume times, whether it equals the replay, and a diff."""
    rng = random.Random(seed)
    with opened(LiveEnv(bootstrap, tmp)) as env:
        events_file = tmp / "events.jsonl"
        messages = encoded(simulate(events_file, days=12, seed=seed % 10_000), env.topics)
        env.start_worker()
        produce(bootstrap, messages[:WARM_UP])
        env.wait_for_progress({}, timeout_s=90)
        rate = len(messages) / rng.uniform(50, 80)
        producer = RateProducer(bootstrap, messages[WARM_UP:], rate=rate)
        producer.start()
        resumed = env.kill_and_restart(rng, kills=3)
        producer.finish()
        env.wait_until_settled(timeout_s=300)
        replay_into(env.offline_database, events_file)
        live, offline = final_tables(env.database), final_tables(env.offline_database)
        diff = diff_summary(live, offline)
        if live != offline:  # kept for a post-mortem, with the workers' logs
            env.keep_databases = True
            logs = Path(os.environ.get("IMGOV_SOAK_LOGS", tmp.parent)) / f"soak-{seed}"
            logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("worker-*.log"):
                (logs / log.name).write_bytes(log.read_bytes())
            diff += f"\ndatabases kept: {env.database}, {env.offline_database}; logs in {logs}"
        return resumed, live == offline, diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("IMGOV_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    print(f"soak: {args.rounds} rounds, seed {args.seed}", flush=True)
    failures = 0
    for n in range(1, args.rounds + 1):
        seed = args.seed * 1_000 + n
        with tempfile.TemporaryDirectory(prefix="imgov-soak-") as tmp:
            started = time.monotonic()
            resumed, equal, diff = soak_round(bootstrap, Path(tmp), seed)
        slow = max(resumed) >= RESUME_TARGET_S
        failures += (not equal) + slow
        print(
            f"round {n:2d} seed {seed}: resumed in "
            + ", ".join(f"{s:4.1f}" for s in resumed)
            + f" s; {'equal to replay' if equal else 'DIFFERENT FROM REPLAY'}"
            + (" (restart slower than 10 s)" if slow else "")
            + f"; {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if not equal:
            print(diff, flush=True)
    print(f"soak: {args.rounds - failures} of {args.rounds} rounds passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
