"""No module of imgov imports a format that runs code when it reads bytes (DESIGN §8).

Ruff's S301/S302 flag calls such as ``pickle.loads``; this also catches an import that
a call through another name would hide. The previous release's pickled KPI snapshots are
read by ``streams.runtime.legacy_snapshot``, which parses them with ``pickletools`` (a
disassembler) and never imports ``pickle``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "marshal",
    "shelve",
}
SOURCES = sorted(
    p for package in ("streams", "sinks", "schemas") for p in (ROOT / package).rglob("*.py")
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return names


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 100


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_code_executing_format(path: Path) -> None:
    assert not _imports(path) & FORBIDDEN
