"""Module hygiene: exported names exist, and generation stays pure."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import streams.simulate

_MODULES = sorted(m.name for m in pkgutil.iter_modules(streams.simulate.__path__))
_PURE = (
    "alerts", "clinic", "config", "delivery", "reports", "run", "sampling", "scenarios", "truth",
)  # fmt: skip
_IMPURE_IMPORTS = {"time", "aiokafka", "kafka", "typer", "rich", "asyncio", "os"}


@pytest.mark.parametrize("name", _MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(f"streams.simulate.{name}")
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ lists missing {exported}"


@pytest.mark.parametrize("name", _PURE)
def test_generation_modules_do_no_io_and_read_no_clock(name: str) -> None:
    source = Path(streams.simulate.__path__[0], f"{name}.py").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & _IMPURE_IMPORTS
    for call in ("datetime.now", "utcnow", "time.time", "random.seed(", "random.random("):
        assert call not in source
