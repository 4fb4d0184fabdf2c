"""The pure core stays pure (STYLE house rule 1, DESIGN §2).

``streams/core`` and ``schemas`` import no Kafka, Faust, ClickHouse or chDB client, and
``streams/core`` never reads the clock: time reaches it as data. Checked on the syntax
tree of every module, so a violation fails here even if the module is never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN_IMPORTS = frozenset(
    {"faust", "aiokafka", "kafka", "confluent_kafka", "clickhouse_driver", "chdb", "mode"}
)
# (module, function) pairs that read the clock; "datetime" covers datetime.datetime too.
CLOCK_CALLS = frozenset(
    {
        ("time", "time"),
        ("time", "time_ns"),
        ("time", "monotonic"),
        ("time", "monotonic_ns"),
        ("time", "perf_counter"),
        ("time", "perf_counter_ns"),
        ("datetime", "now"),
        ("datetime", "utcnow"),
        ("datetime", "today"),
        ("date", "today"),
    }
)


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def forbidden_imports(source: str) -> list[str]:
    """Returns the forbidden modules a module's source imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
    return found


def clock_reads(source: str) -> list[str]:
    """Returns the clock-reading calls in a module's source, as written."""
    tree = ast.parse(source)
    # Names bound by "from time import monotonic [as m]" and similar.
    imported: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "datetime"}:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value
            owner_name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else None
            )
            if owner_name is not None:
                owner_name = imported.get(owner_name, ("", owner_name))[1]
                if (owner_name, func.attr) in CLOCK_CALLS:
                    found.append(ast.unparse(func))
        elif isinstance(func, ast.Name) and imported.get(func.id) in CLOCK_CALLS:
            found.append(func.id)
    return found


@pytest.mark.parametrize("path", _modules("streams/core", "schemas"), ids=lambda p: p.name)
def test_core_and_schemas_import_no_io_clients(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == [], path


@pytest.mark.parametrize("path", _modules("streams/core"), ids=lambda p: p.name)
def test_core_never_reads_the_clock(path: Path) -> None:
    assert clock_reads(path.read_text()) == [], path


def test_the_checks_catch_violations() -> None:
    assert forbidden_imports("import faust\nfrom aiokafka.errors import X\nimport json") == [
        "faust",
        "aiokafka.errors",
    ]
    assert forbidden_imports("from clickhouse_driver import Client\nimport chdb.session") == [
        "clickhouse_driver",
        "chdb.session",
    ]
    assert forbidden_imports("from . import kafka\nimport modelling") == []
    source = (
        "import time\nfrom datetime import datetime as dt\nfrom time import monotonic\n"
        "a = time.time()\nb = dt.now()\nc = monotonic()\nd = datetime.datetime.utcnow()\n"
        "e = time.sleep(1)\n"
    )
    assert clock_reads(source) == ["time.time", "dt.now", "monotonic", "datetime.datetime.utcnow"]


def test_the_packages_are_found() -> None:
    names = {p.name for p in _modules("streams/core")}
    assert {"join.py", "hashchain.py", "pseudonym.py", "config.py"} <= names
