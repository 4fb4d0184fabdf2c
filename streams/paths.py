"""Where imgov finds its checkout's files and keeps its own (no other content)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "STATE_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout (an editable install); infra files are found relative to it."""

STATE_DIR = Path(".imgov")
"""Where the demo, the services and the benchmarks keep their files (git-ignored)."""
