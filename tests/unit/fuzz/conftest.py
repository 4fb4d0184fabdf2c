"""The summary of what the fuzz tests ran (their settings are in ``profile.py``).

At the end of the run the table of examples run and inputs accepted and rejected per
target is printed and written to ``.imgov/fuzz/summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from streams.paths import REPO_ROOT, STATE_DIR
from tests.unit.fuzz.profile import EXAMPLES
from tests.unit.fuzz.tally import TALLY

SUMMARY = REPO_ROOT / STATE_DIR / "fuzz" / "summary.json"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Adds each fuzz test's time to the targets it recorded examples for."""
    before = TALLY.examples()
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        elapsed = time.perf_counter() - started
        grown = [n for n, count in TALLY.examples().items() if count != before.get(n, 0)]
        for name in grown:
            TALLY.targets[name].seconds += elapsed / len(grown)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.targets:
        return
    rows = sorted(TALLY.targets.items())
    total = {
        "examples": sum(t.examples for _, t in rows),
        "inputs": sum(t.inputs for _, t in rows),
        "accepted": sum(t.accepted for _, t in rows),
        "rejected": sum(t.rejected for _, t in rows),
        "seconds": round(sum(t.seconds for _, t in rows), 2),
    }
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz targets ({EXAMPLES} examples per target)")
    header = f"{'target':<28}{'examples':>10}{'inputs':>10}{'accepted':>10}{'rejected':>10}"
    write(header + f"{'seconds':>9}  rejected by reason")
    for name, t in rows:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(t.reasons.items()))
        write(
            f"{name:<28}{t.examples:>10}{t.inputs:>10}{t.accepted:>10}{t.rejected:>10}"
            f"{t.seconds:>9.1f}  {reasons}"
        )
    write(
        f"{'total':<28}{total['examples']:>10}{total['inputs']:>10}{total['accepted']:>10}"
        f"{total['rejected']:>10}{total['seconds']:>9.1f}"
    )
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "examples_per_target": EXAMPLES,
        "targets": {name: t.as_dict() for name, t in rows},
        "total": total,
    }
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write(f"written to {SUMMARY.relative_to(REPO_ROOT)}")
