"""The layer contracts in pyproject.toml cover the whole core and every part."""

from __future__ import annotations

import tomllib
from typing import Any

from tests.gateway import REPO

CORE = REPO / "cellar"


def _contract(kind: str) -> dict[str, Any]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    [found] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == kind]
    return dict(found)


def test_every_core_module_is_held_below_the_rest() -> None:
    entry = ("__init__", "__main__")
    modules = {f"cellar.{path.stem}" for path in CORE.glob("*.py") if path.stem not in entry}
    assert set(_contract("forbidden")["source_modules"]) == {"cellar", *modules}


def test_every_part_is_a_top_level_folder_in_a_layer() -> None:
    layers = _contract("layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    parts = {path for path in CORE.iterdir() if path.is_symlink()}
    assert named == {f"cellar.{path.name}" for path in parts}
    assert all(path.resolve() == REPO / path.name for path in parts)
