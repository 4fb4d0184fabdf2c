"""Reading a protocol's mapping file (TOML): the shipped one, or an operator's."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["load_mapping"]

M = TypeVar("M", bound=BaseModel)


def load_mapping(model: type[M], shipped: str, path: Path | None, protocol: str) -> M:
    """Reads ``path``, or without it the file ``shipped`` of this package, as ``model``.

    Raises:
        ValueError: the file is not valid TOML or not a valid mapping (names the entry).
    """
    if path is None:
        text = resources.files("streams.gateway").joinpath(shipped).read_text()
        source = f"{shipped} (shipped)"
    else:
        text, source = path.read_text(), str(path)
    try:
        return model.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{protocol} mapping {source}: {exc}") from exc
